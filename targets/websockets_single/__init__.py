"""A single-process contract server on python-websockets (asyncio). See :mod:`.server`."""
