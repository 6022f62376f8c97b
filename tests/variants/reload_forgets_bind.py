"""BUG: the worker that adopts a session on a reload resets its uid and protection.

A reload hands each session of a retiring worker to a worker of the new
generation; what ``bind`` and ``protect`` set belongs to the session and must
come with it (section 8). The reference hands sessions over with the same
mover as a migration, so the bug is the one of ``migrate_forgets_bind``; this
variant is the proof that the reload scenario catches it on its own.
Caught by scenarios/test_reload.py (reload_ticks).
"""

from tests.variants import migrate_forgets_bind


def apply() -> None:
    migrate_forgets_bind.apply()
