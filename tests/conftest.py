"""Hooks of the test suite (the scenario harness's own are in scenarios/harness/plugin.py)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``late`` run after every other one, in their order.

    The PHP comparison is one: CI builds Swoole beside the tests, at a low priority
    (``.ci/run``), and that test waits for the build; running it last gives the build the
    whole run.
    """
    late = [item for item in items if item.get_closest_marker("late")]
    if late:
        items[:] = [item for item in items if not item.get_closest_marker("late")] + late
