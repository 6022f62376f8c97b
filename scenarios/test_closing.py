"""Scenario: pushes to a session that is closing, and its own timer (seed: Swoole push to a closed fd).

The promise (contract 3.4, "close known" in section 1): once a session's close
is known it does not exist; a push to it fails with 1004 ``SESSION_CLOSED``
while it is closing and 1005 ``SESSION_NOT_EXIST`` once it is gone, and every
such push counts in ``dead_session_pushes``, exactly once. A session's own
timer never pushes once its close is known.

Made deterministic: the victim starts a fast timer to itself, then asks the
server to close it and withholds its close reply, so the session stays
*closing* (the server waits for the reply, section 3.4) while its timer would
keep ticking. Meanwhile another client pushes to it; then the victim resets
its connection, and the pushes go on to the gone session.

Checked (``scenarios/harness/checkers/closing.py``):

* every push while the session is closing fails with 1004 (at least one is made);
* every push once it is gone fails with 1005;
* ``dead_session_pushes`` grows by exactly the number of those pushes: the
  session's own timer added nothing (and no tick arrived after the close frame);
* no session is left and no fd leaks.
"""

from __future__ import annotations

import time

import pytest

from scenarios.harness.checkers.closing import ClosingHistory, check, figure
from scenarios.harness.client import ScenarioClient
from scenarios.harness.common import counter_delta, warm_up
from scenarios.harness.rawclient import RawClient
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle, until

SEED = "swoole: push() to a closing fd fails with 1004, to a gone one with 1005; timers that skip exists()"
TICK_MS = 10
CLOSING_PUSHES = 20  # at most, while the server waits for the close reply
GONE_PUSHES = 5
#: How long the scenario watches the closing session: a timer of TICK_MS ticks about 25 times meanwhile.
WATCH_S = 0.25


def _code(reply: dict) -> int | None:
    return (reply.get("error") or {}).get("code") if not reply.get("ok") else 0


async def drive(target, admin) -> ClosingHistory:
    """Make the session closing, push to it, make it gone, push again; the history."""
    h = ClosingHistory()
    baseline = await warm_up(target, admin)
    pusher = await ScenarioClient.connect(target.ws_url, "pusher")
    victim = await RawClient.connect(target.ws_url, "victim")
    try:
        await pusher.whoami()
        me = await victim.request("whoami", "w")
        sid = me.get("session")
        timer = await victim.request("timer_start", "t", interval_ms=TICK_MS)
        assert timer.get("ok"), timer

        def ticks() -> list[tuple[float, dict]]:
            return [(t, m) for t, m in victim.messages if isinstance(m, dict) and m.get("ev") == "tick"]

        await until(lambda: len(ticks()) >= 3, timeout=10, what="the victim's own ticks")
        before = await admin.stats()

        # The server closes the session; the victim keeps it closing by withholding its reply.
        victim.withhold = True
        closed = await victim.request("close", "c", code=4000, reason="closing")
        await until(lambda: victim.close_frame is not None or victim.eof_at, timeout=5, what="the server's close frame")
        while len(h.closing_codes) < CLOSING_PUSHES and victim.eof_at is None:
            reply = await pusher.request("push", to=sid, data="to a closing session")
            if victim.eof_at is not None:  # the server dropped it meanwhile: this push may be either
                break
            h.closing_codes.append(_code(reply))
            h.pushes.append((time.time(), h.closing_codes[-1]))
        watch_end = time.monotonic() + WATCH_S
        await settle(lambda: victim.eof_at is not None or time.monotonic() >= watch_end, timeout=WATCH_S + 1)
        mid = await admin.stats()
        h.late_ticks = len([m for t, m in ticks() if victim.close_frame_at is not None and t > victim.close_frame_at])

        # The client goes away without a word: the session is gone for good.
        h.moments["client aborts"] = time.time()
        victim.abort()
        await until(lambda: _gone(admin, sid), timeout=10, what=f"session {sid} to be gone")

        # Not listed is not yet gone: a closing session is not listed either. Gone is when the
        # server has counted its end (sessions_closed since before the close: a server that does
        # not wait for the close reply counted it then, one that waits counts it at the reset).
        async def counted_closed() -> bool:
            return counter_delta(before, await admin.stats(), "sessions_closed") >= 1

        await until(counted_closed, timeout=10, what=f"the server to count session {sid} closed")
        h.moments["counted gone"] = time.time()
        for _ in range(GONE_PUSHES):
            h.gone_codes.append(_code(await pusher.request("push", to=sid, data="to a gone session")))
            h.pushes.append((time.time(), h.gone_codes[-1]))
        after = await admin.stats()
    finally:
        await pusher.dispose()
        await victim.dispose()
    h.tick_times = [t for t, _ in ticks()]
    if victim.close_frame_at is not None:
        h.moments["server's close frame"] = victim.close_frame_at
    h.dead_while_closing = counter_delta(before, mid, "dead_session_pushes")
    h.dead_total = counter_delta(before, after, "dead_session_pushes")
    h.facts = {
        "victim": {"session": sid, "close_reply": closed, "close_frame": str(victim.close_frame)},
        "pushes": {"while_closing": h.closing_codes, "once_gone": h.gone_codes},
    }
    h.leftovers = await observe_leftovers(admin, baseline)
    return h


async def _gone(admin, sid: int) -> bool:
    status, _ = await admin.request("GET", f"/v1/sessions/{sid}")
    return status == 404


@pytest.mark.scenario("closing_session", seed=SEED)
@pytest.mark.requires("dead_session_stats")
def test_closing_session(target, admin, evidence, run_async) -> None:
    history = run_async(drive(target, admin), timeout=60)
    evidence.add_facts(history.facts)
    evidence.figure(figure(history))
    evidence.record(check(history))
    evidence.verdict()
