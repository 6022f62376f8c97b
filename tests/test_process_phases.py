"""A child's life cycle (child/runtime.ProcessPhase) and a retiree's (master/children.RetireePhase)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from reference_server.child.runtime import ProcessPhase, Runtime


class _Retirer:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    async def retire(self, reload_id: int, max_wait_ms: int) -> None:
        self.calls.append((reload_id, max_wait_ms))


def _child(phase: ProcessPhase) -> Any:
    return SimpleNamespace(phase=phase, retired_in=None, stopping=asyncio.Event(), _stop_reason="", retirer=_Retirer())


@pytest.mark.parametrize("phase", [ProcessPhase.STARTING, ProcessPhase.SERVING])
def test_a_serving_process_retires_once(phase: ProcessPhase) -> None:
    child = _child(phase)
    asyncio.run(Runtime._retire(child, 4, 3000))
    asyncio.run(Runtime._retire(child, 5, 3000))  # a second order is ignored
    assert child.phase is ProcessPhase.RETIRING and child.retired_in == 4
    assert child.retirer.calls == [(4, 3000)]


def test_a_stopping_process_does_not_retire() -> None:
    child = _child(ProcessPhase.STOPPING)
    asyncio.run(Runtime._retire(child, 4, 3000))
    assert child.phase is ProcessPhase.STOPPING and child.retired_in is None and child.retirer.calls == []


def test_stopping_is_entered_once_and_keeps_the_first_reason_and_the_retirement() -> None:
    child = _child(ProcessPhase.RETIRING)
    child.retired_in = 4
    Runtime.request_stop(child, "reload")
    Runtime.request_stop(child, "SIGTERM")
    assert child.phase is ProcessPhase.STOPPING and child.stopping.is_set() and child._stop_reason == "reload"
    assert Runtime.retiring.fget(child)  # type: ignore[attr-defined]  # it still reports as retired at exit
