"""The ASGI application each uvicorn worker imports: ``create_app()`` (a factory).

The contract application on ``/`` of the WebSocket port (the admin API is
served by the supervisor, ``admin.py``). The lifespan starts this worker's :class:`~.node.Node` (it registers the
worker in Redis and joins the bus) and stops it: uvicorn runs the lifespan
shutdown after it has closed every connection, so that is the worker's exit
hook.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from .node import Node
from .settings import Settings


def create_app() -> Starlette:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    node = Node(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    async def endpoint(ws: WebSocket) -> None:
        await node.serve(ws)

    return Starlette(routes=[WebSocketRoute("/", endpoint)], lifespan=lifespan)
