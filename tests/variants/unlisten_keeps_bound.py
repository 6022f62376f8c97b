"""BUG: unlisten stops accepting but leaves the listening socket open (swoole-src #4098).

The port stays bound: clients complete TCP in its backlog and then hang, and
nobody else can bind the port. Caught by scenarios/test_ports.py (port_churn).
"""

from reference_server.master.listeners import ListenerSet
from tests.variants import patch

_kept: list = []  # the "closed" sockets, still open


def apply() -> None:
    def _close_socket(self, sock) -> None:
        _kept.append(sock)  # no longer in the selector, never closed

    patch(ListenerSet, "_close_socket", _close_socket)
