"""Alternative targets: independent servers that implement the target contract.

They are peers of ``reference_server/`` for the comparison matrix, written the
way a server author on each engine would write them, each with its manifest
declaring only what it supports:

* :mod:`targets.websockets_single` -- one asyncio process on python-websockets.
* :mod:`targets.uvicorn_starlette` -- uvicorn's own multi-process supervisor
  (its reload signal is SIGHUP) with Starlette WebSockets; everything that
  crosses processes goes through Redis.

:mod:`targets.kit` holds what any contract server needs whatever its engine:
error codes, replies, and request validation. It shares no code with the
reference server, so the peers cannot inherit its bugs.
"""
