"""The checks of the dynamic-port scenarios (scenarios/test_ports.py; contract section 9).

Jepsen-style: ``port_churn`` records every change it asked for (with the time the
request left and the time its answer came) and every connection attempt (with its
start, end and outcome); :class:`PortHistory` is the model of which port was listed
when, and the attempts are checked against it.

The grace window of a change is ``[request sent, answer received + grace_ms]``
(``grace_ms`` from the manifest's ``[ports]``, 0 for the reference). An attempt that
overlaps a grace window of its port may go either way; any other attempt must succeed
if its port is listed and be refused (``ECONNREFUSED``) if it is not. No attempt may
hang: each has a bound.

The other scenarios (errors, limits, the ports file) have histories of their own below.
Everything here is pure: histories in, named checks out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..evidence import Check
from ..figures import Answer, Figure, Lane, Mark, answers_figure, rel
from ..spec import Leftovers, check_leftovers, named


class Outcome(StrEnum):
    """How one connection attempt ended."""

    OK = "ok"  # handshake done and a message came back
    REFUSED = "refused"  # ECONNREFUSED at connect
    RESET = "reset"  # the connection was reset or closed during the handshake
    LIMITED = "limited"  # HTTP 503 PORT_LIMIT
    REJECTED = "rejected"  # another non-101 answer
    HANG = "hang"  # nothing conclusive within ATTEMPT_BOUND_S
    ERROR = "error"  # anything else (named in the detail)


@dataclass
class Attempt:
    port: int
    start: float
    end: float
    outcome: str
    detail: str = ""

    def as_dict(self, t0: float) -> dict[str, Any]:
        return {"port": self.port, "start_ms": round((self.start - t0) * 1000, 2),
                "end_ms": round((self.end - t0) * 1000, 2), "outcome": self.outcome, "detail": self.detail}


@dataclass
class Change:
    """One listen or unlisten the scenario asked for, and what came of it."""

    port: int
    listed: bool  # the state it asks for
    sent: float
    done: float
    how: str  # admin | app | file
    options: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    error: Any = None


class PortHistory:
    """Changes per port; answers 'was this port listed throughout [a, b]?'."""

    def __init__(self, grace_ms: float) -> None:
        self.grace = grace_ms / 1000.0
        self.changes: dict[int, list[Change]] = {}

    def record(self, change: Change) -> None:
        self.changes.setdefault(change.port, []).append(change)

    def state(self, port: int, start: float, end: float) -> bool | None:
        """True/False: listed/not listed throughout; None: a change's grace window overlaps."""
        listed = False
        for c in self.changes.get(port, []):
            if not c.ok:
                if c.sent <= end and c.done + self.grace >= start:
                    return None  # a failed change is still a window of doubt
                continue
            if c.sent <= end and c.done + self.grace >= start:
                return None
            if c.done + self.grace < start:
                listed = c.listed
        return listed

    def violations(self, attempts: list[Attempt]) -> tuple[list[Attempt], int, int]:
        """Attempts whose outcome contradicts the model; and how many were decided / in grace."""
        bad, decided, doubtful = [], 0, 0
        for a in attempts:
            state = self.state(a.port, a.start, a.end)
            if state is None:
                doubtful += 1
                continue
            decided += 1
            expected = Outcome.OK if state else Outcome.REFUSED
            if a.outcome != expected:
                bad.append(a)
        return bad, decided, doubtful


# -- port_churn -------------------------------------------------------------------------------------


@dataclass
class ChurnHistory:
    """What ``port_churn`` observed.

    ``bind_after_unlisten``: per unlisten, the error of a fresh ``bind()`` right after the
    answer (``probe``: None when it bound). ``reuse_probes``: per listen, whether a second
    SO_REUSEPORT socket could bind it (``ok``: as the listener's ``reuse_port`` asked).
    ``residents``: per session of a removed port, whether it followed the policy (``ok``).
    ``mismatches``: where the listeners the target reported differed from the model.
    ``reload``: the reload in the middle (None when the target has no reload).
    """

    model: PortHistory
    attempts: list[Attempt] = field(default_factory=list)
    change_failures: list[dict[str, Any]] = field(default_factory=list)
    bind_after_unlisten: list[dict[str, Any]] = field(default_factory=list)
    reuse_probes: list[dict[str, Any]] = field(default_factory=list)
    residents: list[dict[str, Any]] = field(default_factory=list)
    resident_connect_failed: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    reload: dict[str, Any] | None = None
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)

    def changes(self) -> list[Change]:
        return [c for cs in self.model.changes.values() for c in cs]


def check_churn(h: ChurnHistory, *, attempt_bound_s: float) -> list[Check]:
    bad, decided, _ = h.model.violations(h.attempts)
    t0 = min((a.start for a in h.attempts), default=0.0)
    hangs = [a.as_dict(t0) for a in h.attempts if a.outcome == Outcome.HANG]
    not_free = [b for b in h.bind_after_unlisten if b.get("probe") is not None]
    wrong_reuse = [p for p in h.reuse_probes if not p.get("ok")]
    resident_bad = [r for r in h.residents if not r.get("ok")]
    changes = h.changes()
    checks = [
        named(
            "every listen and unlisten of the churn succeeded",
            bool(changes) and not h.change_failures,
            expected="each answered ok (at least one change)",
            observed=h.change_failures[:5] or f"{len(changes)} ok",
        ),
        named(
            "a connection attempt succeeds exactly when its port is listed (refused when it is not)",
            not bad and decided > 0,
            expected="listed: handshake and echo; not listed: ECONNREFUSED (outside each change's grace window)",
            observed=f"{len(bad)} of {decided} decided attempts contradict the model" if bad else f"{decided} agree",
            violations=[dict(a.as_dict(t0), listed=h.model.state(a.port, a.start, a.end)) for a in bad[:15]],
        ),
        named(
            "no connection attempt hangs",
            bool(h.attempts) and not hangs,
            timing=True,
            expected=f"every attempt concluded within {attempt_bound_s}s",
            observed=f"{len(hangs)} hung" if hangs else f"none of {len(h.attempts)}",
            hung=hangs[:10],
        ),
        named(
            "after unlisten, a fresh process can bind the port at once",
            not not_free and bool(h.bind_after_unlisten),
            expected="bind() succeeds right after the answer",
            observed=not_free[:10] or f"{len(h.bind_after_unlisten)} ports free at once",
        ),
        named(
            "SO_REUSEPORT is as asked: a second SO_REUSEPORT socket can bind only a reuse_port listener's port",
            bool(h.reuse_probes) and not wrong_reuse,
            expected="reuse_port: bind succeeds; otherwise EADDRINUSE",
            observed=wrong_reuse[:10] or f"{len(h.reuse_probes)} listeners as asked",
        ),
        named(
            "sessions of a removed port follow its policy (keep: served on; close: closed with 1001)",
            not resident_bad and not h.resident_connect_failed and bool(h.residents),
            expected="keep: an echo is answered after the unlisten; close: a close frame 1001",
            observed=(resident_bad + h.resident_connect_failed)[:10] or f"{len(h.residents)} as expected",
        ),
        named(
            "the listeners the target reports match the harness's model after every change",
            not h.mismatches,
            expected="same ports, same reuse_port and on_remove",
            observed=h.mismatches[:5] or "always",
        ),
    ]
    if h.reload is not None:  # a target without reload has no reload in the middle
        closed = h.reload.get("residents_closed", [])
        checks += [
            named(
                "ports listed before the reload are listed after it, with the same settings",
                bool(h.reload.get("same")) and bool(h.reload.get("listeners")),
                expected="identical listener settings (at least one listener)",
                observed=h.reload,
            ),
            named("the reload closed no session", not closed, expected="resident sessions open across the reload",
                  observed=closed or "none closed"),
        ]
    return [*checks, *check_leftovers(h.leftovers)]


def model_mismatch(model: dict[int, dict[str, Any]], reported: dict[int, dict[str, Any]], fixed: set[int]) -> dict[str, Any]:
    """Differences between the ports the harness listed and the ones the target reports."""
    got = {p: e for p, e in reported.items() if p not in fixed}
    out: dict[str, Any] = {}
    if set(model) != set(got):
        out["missing"] = sorted(set(model) - set(got))
        out["unexpected"] = sorted(set(got) - set(model))
    for port in set(model) & set(got):
        for key in ("reuse_port", "on_remove"):
            if model[port][key] != got[port].get(key):
                out.setdefault("settings", []).append({"port": port, key: [model[port][key], got[port].get(key)]})
    return out


# -- port_errors ------------------------------------------------------------------------------------


@dataclass
class Refusal:
    """One conflicting or invalid listen (or unlisten) and its answer."""

    case: str
    via: str  # "admin" or "app"
    expected: int  # the contract error code
    refused: bool  # the answer was an error (for "garbage body": HTTP 400)
    got: int | None  # the error code answered
    names_port: bool | None = None  # app op: the message names the port (None: not asked)
    answer: Any = None


@dataclass
class PortErrorsHistory:
    """What ``port_errors`` observed: each refusal, then the processes, clients, listeners and ports."""

    refusals: list[Refusal] = field(default_factory=list)
    processes_before: list[Any] = field(default_factory=list)
    processes_after: list[Any] = field(default_factory=list)
    clients: int = 0
    clients_answering: int = 0
    listeners_before: dict[int, dict[str, Any]] = field(default_factory=dict)
    listeners_after: dict[int, dict[str, Any]] = field(default_factory=dict)
    own_port_attempt: str = ""  # Outcome of an attempt on a port the server listens on
    main_port_attempt: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def check_port_errors(h: PortErrorsHistory) -> list[Check]:
    wrong = [
        {"case": r.case, "via": r.via, "expected": r.expected, "got": r.got, "names_port": r.names_port, "answer": r.answer}
        for r in h.refusals
        if not (r.refused and r.got == r.expected and r.names_port is not False)
    ]
    same_procs = h.processes_before == h.processes_after and bool(h.processes_before)
    return [
        named(
            "conflicting and invalid listens fail with their contract error, naming the port",
            bool(h.refusals) and not wrong,
            expected={r.case: r.expected for r in h.refusals} or "at least one case",
            observed=wrong[:8] or "each as expected",
        ),
        named(
            "a conflicting or invalid listen changes nothing (no process restarted, no session lost)",
            same_procs and h.clients > 0 and h.clients_answering == h.clients,
            expected="same processes, every client answered",
            observed={"processes_changed": not same_procs, "clients_answering": h.clients_answering, "clients": h.clients},
        ),
        named(
            "the listeners are unchanged by failed listens",
            h.listeners_before == h.listeners_after,
            expected=sorted(h.listeners_before),
            observed=sorted(h.listeners_after),
        ),
        named(
            "the server still serves its other ports",
            h.own_port_attempt == Outcome.OK and h.main_port_attempt == Outcome.OK,
            expected="ok",
            observed={"added port": h.own_port_attempt, "main port": h.main_port_attempt},
        ),
    ]


# -- port_limits ------------------------------------------------------------------------------------


@dataclass
class LimitsHistory:
    """What ``port_limits`` observed: port A has ``limit`` connections at most, port B the echo handler set."""

    limit: int
    port_a: int
    over: list[tuple[str, str]] = field(default_factory=list)  # (outcome, detail) of attempts over A's limit
    b_sessions: int = 0  # sessions opened on B while A was full
    b_open: int = 0  # of which still open
    who_a: dict[str, Any] = field(default_factory=dict)  # whoami on A
    echoed_b: dict[str, Any] = field(default_factory=dict)  # what B sent back for a whoami
    freed: tuple[str, str] = ("", "")  # an attempt on A once one of its sessions closed
    figures_a: dict[str, Any] = field(default_factory=dict)  # /v1/listeners entries at the end
    figures_b: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def check_limits(h: LimitsHistory) -> list[Check]:
    n = h.limit
    expected_a = {"accepted": n + 1, "refused": len(h.over), "connections": n - 1}
    expected_b = {"accepted": n + 3, "refused": 0, "connections": n + 3}
    got_a = {k: h.figures_a.get(k) for k in expected_a}
    got_b = {k: h.figures_b.get(k) for k in expected_b}
    return [
        named(
            "over its limit, a port answers the handshake with 503 PORT_LIMIT (never a hang)",
            bool(h.over) and all(o == Outcome.LIMITED for o, _ in h.over),
            expected=f"{len(h.over)} x limited (at least one)",
            observed=h.over,
        ),
        named(
            "a port at its limit does not starve another port",
            h.b_sessions == n + 3 and h.b_open == n + 3,
            expected=f"{n + 3} sessions on the other port",
            observed={"opened": h.b_sessions, "open": h.b_open},
        ),
        named(
            "each port serves its handler set (default: the contract ops; echo: messages back verbatim)",
            h.who_a.get("ok") is True and h.who_a.get("port") == h.port_a and h.who_a.get("handler") == "default"
            and h.echoed_b.get("op") == "whoami" and "ok" not in h.echoed_b,
            expected={"a": "whoami reply", "b": "the request echoed"},
            observed={"a": h.who_a, "b": h.echoed_b},
        ),
        named(
            "when a session of the port closes, a new connection is admitted",
            h.freed[0] == Outcome.OK,
            expected="ok",
            observed=h.freed,
        ),
        named(
            "per-port figures agree with what the clients saw",
            got_a == expected_a and got_b == expected_b,
            expected={"a": expected_a, "b": expected_b},
            observed={"a": got_a, "b": got_b},
            refused_by_reason=h.figures_a.get("refused_by_reason"),
        ),
    ]


# -- ports_file -------------------------------------------------------------------------------------

#: The first file's rejected entries (0-based) and their codes: port 70000, a bad host, a port
#: listed twice, a port the admin API holds.
FILE_REJECTED = {3: 4400, 4: 3003, 5: 4400, 6: 3004}


@dataclass
class FileHistory:
    """What ``ports_file`` observed, file by file.

    ``ports``: the six ports of the scenario (``ports[5]`` held by the admin API). Each
    ``reportN`` is the target's ``last`` report after the N-th file; ``listenersN`` the
    listeners right after it (port -> entry).
    """

    main_port: int
    ports: list[int]
    report1: dict[str, Any] = field(default_factory=dict)
    listeners1: dict[int, dict[str, Any]] = field(default_factory=dict)
    served1: list[tuple[int, str]] = field(default_factory=list)
    report2: dict[str, Any] = field(default_factory=dict)
    listeners2: dict[int, dict[str, Any]] = field(default_factory=dict)
    removed_port_attempt: str = ""
    rebound_resident_close: Any = None
    report3: dict[str, Any] = field(default_factory=dict)
    listeners3: dict[int, dict[str, Any]] = field(default_factory=dict)
    added_at_before: Any = None
    echo_resident_closed: bool = False
    served3: str = ""
    invalid_error: Any = None
    invalid_unchanged: bool = False
    report_empty: dict[str, Any] = field(default_factory=dict)
    listeners_empty: list[int] = field(default_factory=list)
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)


def check_file(h: FileHistory) -> list[Check]:
    p, l1, l2, l3 = h.ports, h.listeners1, h.listeners2, h.listeners3
    held = p[5]
    r1, r2, r3 = h.report1, h.report2, h.report3
    rejected = {r.get("entry"): r.get("code") for r in r1.get("rejected", [])}
    file_ports = {q for q, e in l1.items() if e.get("source") == "file"}
    changed = {k: r2.get(k) for k in ("removed", "updated", "rebound", "added")}
    return [
        named(
            "every rejected entry of the ports file is reported with its code",
            rejected == FILE_REJECTED,
            expected=FILE_REJECTED,
            observed=r1.get("rejected"),
        ),
        named(
            "the valid entries are applied",
            file_ports == {p[0], p[1], p[2]} and l1.get(p[1], {}).get("handler") == "echo"
            and bool(l1.get(p[2], {}).get("reuse_port")) and l1.get(held, {}).get("source") == "api",
            expected=sorted([p[0], p[1], p[2]]),
            observed={q: {k: e.get(k) for k in ("source", "handler", "reuse_port")} for q, e in l1.items()},
        ),
        named(
            "ports from the file serve connections",
            len(h.served1) == 3 and all(o == Outcome.OK for _, o in h.served1),
            expected="ok x 3",
            observed=h.served1,
        ),
        named(
            "a changed file adds, removes, updates and re-binds to match",
            sorted(r2.get("removed", [])) == [p[0]] and r2.get("updated") == [p[1]] and r2.get("rebound") == [p[2]]
            and r2.get("added") == [p[4]] and l2.get(p[1], {}).get("max_connections") == 9
            and l2.get(p[2], {}).get("reuse_port") is False and h.removed_port_attempt == Outcome.REFUSED,
            expected={"removed": [p[0]], "updated": [p[1]], "rebound": [p[2]], "added": [p[4]]},
            observed=changed | {"p0_attempt": h.removed_port_attempt},
        ),
        named(
            "a re-bound port applies its policy to its sessions (close: 1001)",
            h.rebound_resident_close is not None and h.rebound_resident_close[0] == 1001,
            expected=1001,
            observed=h.rebound_resident_close,
        ),
        named(
            "an entry whose only change is its handler is updated in place",
            r3.get("updated") == [p[1]] and not r3.get("rebound") and not r3.get("removed")
            and h.added_at_before is not None and l3.get(p[1], {}).get("added_at") == h.added_at_before
            and l3.get(p[1], {}).get("handler") == "default" and not h.echo_resident_closed and h.served3 == Outcome.OK,
            expected={"updated": [p[1]], "rebound": [], "added_at": h.added_at_before, "its session": "open"},
            observed={k: r3.get(k) for k in ("updated", "rebound", "removed")}
            | {"added_at": l3.get(p[1], {}).get("added_at"), "handler": l3.get(p[1], {}).get("handler"),
               "session closed": h.echo_resident_closed},
        ),
        named(
            "a file that is not valid TOML changes nothing and is reported",
            h.invalid_error is not None and h.invalid_unchanged,
            expected="error reported, listeners unchanged",
            observed={"error": h.invalid_error, "unchanged": h.invalid_unchanged},
        ),
        named(
            "an empty file removes every file port and nothing else",
            set(h.listeners_empty) == {h.main_port, held} and sorted(h.report_empty.get("removed", [])) == sorted([p[1], p[2], p[4]]),
            expected=sorted([h.main_port, held]),
            observed=sorted(h.listeners_empty),
        ),
        *check_leftovers(h.leftovers),
    ]


# -- figures ---------------------------------------------------------------------------------------

MODEL_CHECK = "a connection attempt succeeds exactly when its port is listed (refused when it is not)"
HANG_CHECK = "no connection attempt hangs"
MAX_PROBLEM_MARKS = 12


def listed_spans(model: PortHistory, end: float) -> dict[int, list[tuple[float, float]]]:
    """Per port, the spans it was listed (from a listen's answer to the next unlisten's request)."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for port, changes in model.changes.items():
        since: float | None = None
        for c in sorted(changes, key=lambda c: c.sent):
            if not c.ok:
                continue
            if c.listed and since is None:
                since = c.done
            elif not c.listed and since is not None:
                spans.setdefault(port, []).append((since, c.sent))
                since = None
        if since is not None:
            spans.setdefault(port, []).append((since, end))
    return spans


def churn_figure(h: ChurnHistory) -> Figure | None:
    """Each port: the spans it was listed (bars), every connection attempt as a dot coloured by how it
    ended; attempts that contradict the model and attempts that hung are marked."""
    if not h.attempts and not h.model.changes:
        return None
    times = [a.start for a in h.attempts] + [c.sent for cs in h.model.changes.values() for c in cs]
    origin, end = min(times), max([a.end for a in h.attempts] + times)
    fig = Figure("ports", "Each port: listed spans (bars) and connection attempts (dots, by outcome)", "lanes",
                 y_label="port", origin=origin)
    spans = listed_spans(h.model, end)
    for port in sorted({a.port for a in h.attempts} | set(h.model.changes)):
        lane = Lane(str(port), bars=[(rel(a, origin), rel(b, origin), "listed") for a, b in spans.get(port, [])])
        lane.points = [(rel(a.start, origin), a.outcome) for a in h.attempts if a.port == port]
        fig.lanes.append(lane)
    bad, _, _ = h.model.violations(h.attempts)
    hangs = [a for a in h.attempts if a.outcome == Outcome.HANG]
    problems = hangs[:MAX_PROBLEM_MARKS // 2] + [a for a in bad if a.outcome != Outcome.HANG][:MAX_PROBLEM_MARKS // 2]
    for a in problems:
        if a.outcome == Outcome.HANG:
            fig.marks.append(Mark(rel(a.start, origin), "hang", str(a.port), check=HANG_CHECK))
        else:
            said = "listed" if h.model.state(a.port, a.start, a.end) else "not listed"
            fig.marks.append(Mark(rel(a.start, origin), f"{a.outcome} while {said}", str(a.port), check=MODEL_CHECK))
    if h.reload:
        fig.note = "a full reload ran in the middle"
    return fig


def errors_figure(h: PortErrorsHistory) -> Figure | None:
    """Each conflicting or invalid listen (by the admin API and by the op): refused with its code,
    naming the port, or not."""
    answers = [
        Answer(f"{r.case} ({r.via})", r.refused and r.got == r.expected and r.names_port is not False,
               f"got {r.got}, want {r.expected}", "conflicting and invalid listens fail with their contract error, naming the port")
        for r in h.refusals
    ]
    return answers_figure("refusals", "Each conflicting or invalid listen: refused with its contract error?", answers)
