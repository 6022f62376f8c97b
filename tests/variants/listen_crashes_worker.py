"""BUG: a listen that fails with EADDRINUSE kills the process that asked for it.

The error is not turned into a clear reply: the worker dies (as with a fatal
error in a Swoole worker), its clients are cut off and it is respawned.
Caught by scenarios/test_ports.py (port_errors).
"""

import os

from reference_server.child.api import Server
from reference_server.errors import ErrorCode, ServerError
from tests.variants import patch


def apply() -> None:
    original = Server.listen

    async def listen(self, port, host=None, **options):
        try:
            return await original(self, port, host, **options)
        except ServerError as exc:
            if exc.code is ErrorCode.PORT_IN_USE:
                os._exit(70)
            raise

    patch(Server, "listen", listen)
