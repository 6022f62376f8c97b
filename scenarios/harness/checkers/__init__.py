"""The pure checks of each scenario: ``check(history) -> list[Check]``, one module per scenario file.

Each module defines the scenario's history (a dataclass its ``drive`` fills) and the check
function; they have unit tests on synthetic histories (``tests/test_checkers.py`` for
closing, heartbeat, dead-session pushes and the sweep; ``tests/test_checkers_<module>.py``
for the others), so each check is shown to pass on a correct history and to fail on the bug
it names, and on a history where nothing happened.
"""
