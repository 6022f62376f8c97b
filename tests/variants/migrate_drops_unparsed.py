"""BUG: a migrated session leaves behind the bytes its old worker read but had not parsed.

Exactly what goes wrong when a server passes only the fd (Workerman #1001 done
naively): half a frame stays in the source, and the target parses the rest
as if it were a new frame. Caught by scenarios/test_migration.py
(migration_partial_frames).
"""

import dataclasses

from reference_server.session.mover import Mover
from tests.variants import patch


def apply() -> None:
    def transfer_snapshot(self, snap):
        return dataclasses.replace(snap, rx_pending=b"")

    patch(Mover, "transfer_snapshot", transfer_snapshot)
