"""The ownership model of ``migration_model`` (scenarios/test_migration_model.py; contract 8).

Hypothesis drives a live target with connect, echo, migrate, push, close and abort; the
model knows, for each client, whether it is open, which worker owns it, and how many
pushes were sent to it. Each ``judge_*`` below is a pure rule: the model's state and the
target's answer in, a problem (a sentence naming what disagreed) or ``None`` out. The
state machine asserts them after every step, so Hypothesis shrinks any disagreement to
a short sequence of steps; :func:`check_model` turns the run into named checks.

The rules (contract 8.1, 3.4):

* a migrate of an open session to another running worker answers 200 naming ``from`` and
  ``to``; to its own worker 409 ``ALREADY_THERE`` (2010); to a worker that does not exist
  404 ``UNKNOWN_PROCESS`` (2003); of a closed session 1004 or 1005;
* an echo comes back intact, from the worker the model says owns the session;
* an admin push to an open session answers 200, to a closed one 404 or 409;
* every open client has received its pushes 1..n, each once, in order, and was not closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark
from ..spec import named


@dataclass
class Owned:
    """The model of one client's session."""

    session: int
    owner: int
    open: bool = True
    pushes: int = 0  # admin pushes the target accepted for it
    echoes: int = 0


def _code(body: Any) -> int | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def judge_migrate(m: Owned, dst: int, workers: int, status: int, body: Any) -> str | None:
    """The answer to ``POST /v1/sessions/{id}/migrate {"worker": dst}``; the caller moves the owner on 200."""
    code = _code(body)
    if not m.open:
        return None if code in (1004, 1005) else f"migrate of closed session {m.session} answered {status} {body}"
    if not 0 <= dst < workers:
        return None if (status, code) == (404, 2003) else f"migrate to worker {dst} answered {status} {body}"
    if dst == m.owner:
        return None if (status, code) == (409, 2010) else f"migrate to its own worker answered {status} {body}"
    if status != 200:
        return f"migrate {m.owner}->{dst} answered {status} {body}"
    if not isinstance(body, dict) or body.get("from") != m.owner or body.get("to") != dst:
        return f"migrate {m.owner}->{dst} answered 200 naming {body}"
    return None


def judge_echo(m: Owned, data: str, reply: dict[str, Any]) -> str | None:
    if not reply.get("ok") or reply.get("data") != data:
        return f"echo broken: {str(reply)[:200]}"
    if reply.get("worker") != m.owner:
        return f"echo from worker {reply.get('worker')}, model says {m.owner}"
    return None


def judge_push(m: Owned, status: int, body: Any) -> str | None:
    """The answer to an admin push; the caller counts it for the session on 200."""
    if m.open:
        return None if status == 200 else f"push to an open session answered {status} {body}"
    return None if status in (404, 409) else f"push to a closed session answered {status} {body}"


def judge_received(m: Owned, got: list[int], closed: bool) -> str | None:
    """An open client's pushes so far (the ``n`` of each, in arrival order), and whether it was closed."""
    if closed:
        return f"session {m.session} was closed by the server"
    if got != list(range(1, m.pushes + 1)):
        return f"pushes to {m.session}: {got[-10:]} (sent {m.pushes})"
    return None


@dataclass
class ModelRun:
    """What a Hypothesis run did (over all its examples) and the first disagreement."""

    steps: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # connect, echo, migrated, push, close, abort
    failure: str | None = None

    #: every counted action, in order (the figure's x axis)
    order: list[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.order.append(what)


def check_model(run: ModelRun) -> list[Check]:
    exercised = {k: run.counts.get(k, 0) for k in ("migrated", "echo", "push")}
    return [
        named(
            "the server agrees with the ownership model in every step",
            run.failure is None,
            expected="no disagreement",
            observed=run.failure[:2000] if run.failure else "none",
            last_steps=run.steps[-30:],
        ),
        named(
            "the model was exercised: sessions moved, echoed and were pushed to",
            all(exercised.values()),
            expected="at least one of each",
            observed=run.counts,
        ),
    ]


MODEL_CHECK = "the server agrees with the ownership model in every step"


def figure(run: ModelRun) -> Figure | None:
    """Every action of the state machine, in order, on the row of its kind; a disagreement with the
    model marked after the last one (Hypothesis then shrinks it: the check's details list the steps)."""
    if not run.order:
        return None
    fig = Figure("actions", "The state machine's actions in order (all examples), by kind", "lanes",
                 x_label="action, in the order run", y_label="kind")
    lanes: dict[str, Lane] = {}
    for i, what in enumerate(run.order):
        lanes.setdefault(what, Lane(what)).points.append((float(i), what))
    fig.lanes = list(lanes.values())
    if run.failure:
        last = run.order[-1]
        fig.marks.append(Mark(float(len(run.order) - 1), "disagreement: " + run.failure.splitlines()[0][:40], last,
                              check=MODEL_CHECK))
    return fig
