"""The pure checks of each scenario: ``check(history) -> list[Check]``, one module per scenario.

Each module defines the scenario's history (a dataclass its ``drive`` fills) and the check
function; ``tests/test_checkers.py`` feeds them synthetic histories.
"""
