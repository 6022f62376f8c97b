"""BUG: a worker has no connection capacity and takes descriptors that did not arrive for a broken ctl channel.

The seed of fd_exhaustion: a worker accepts every connection handed to it until it runs out
of descriptors; the next handed-over connection arrives without its descriptor, the worker
takes that for a broken control channel and stops, and so does every other worker.
Caught by scenarios/test_fd_exhaustion.py (fd_exhaustion).
"""

import errno

from reference_server.ipc import links
from reference_server.roles.worker import Worker
from tests.variants import patch


def apply() -> None:
    init = Worker.__init__
    recv = links.ctl_recv

    def unbounded(self: Worker, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self.capacity = 1 << 30

    def fatal(sock):
        try:
            return recv(sock)
        except links.FdsTruncated:
            raise OSError(errno.EMSGSIZE, "ctl message arrived with truncated fds") from None

    patch(Worker, "__init__", unbounded)
    patch(links, "ctl_recv", fatal)
