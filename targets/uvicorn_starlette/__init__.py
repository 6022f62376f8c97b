"""A multi-process contract server on uvicorn (its own supervisor) and Starlette WebSockets.

Read in this order: ``supervisor.py`` (the master: uvicorn's ``Multiprocess``
plus task workers and reloads), ``app.py`` (what each worker imports),
``node.py`` (a worker's sessions and ops), ``bus.py`` (calls between
processes over Redis), ``admin.py``, ``broadcast.py``, ``taskworker.py``.
"""
