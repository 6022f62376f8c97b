"""BUG: the old worker shuts its copy of a handed-over socket down, sending the client a FIN.

``shutdown()`` acts on the connection, not on one process's descriptor: the
client sees the server end the connection although the new worker holds it.
Caught by scenarios/test_migration.py (migration_stream).
"""

import socket

from reference_server.session.mover import Mover
from tests.variants import patch


def apply() -> None:
    def release_source_copy(self, sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    patch(Mover, "release_source_copy", release_source_copy)
