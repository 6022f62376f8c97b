"""Figures of a case's history: what the evidence page draws (the data; drawing is elsewhere).

People who debug concurrency read timelines: Jepsen draws latency with the fault windows
shaded. Each scenario's checker module builds, from the history it judges, one or two
:class:`Figure` s (a function ``figures(history)``); the plugin keeps them in the case's
evidence JSON under ``figures``, and :mod:`scenarios.compare.draw` renders them (matplotlib,
in a low-priority process beside the run) into PNG files that the evidence page embeds.

Two kinds cover every scenario:

* ``lanes``: one row per thing followed (a session, a client, a port), a dot per event at its
  time, coloured by a category (the generation of a tick, the worker that owns a session, the
  outcome of a connection attempt); optional bars per row (a port's listed spans).
* ``series``: numbers over time (latency, events per second), one line or set of dots per series.

Both have *windows* (spans shaded: a reload, an outage, a fault) and *marks* (a point
annotated; a mark that names a check is drawn red when that check failed, so a failed check
points at the place in the figure where it failed).

Times are seconds from the figure's ``origin`` (a wall-clock time), so the JSON stays small.
Everything here is pure data.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

#: Dots kept per figure (the rest are sampled evenly, and the figure says so).
MAX_POINTS = 20_000
#: Rows of a lanes figure (the others are left out, and the figure says so).
MAX_LANES = 40
#: Marks kept per check (the first ones).
MAX_MARKS_PER_CHECK = 4


@dataclass
class Window:
    start: float
    end: float
    label: str = ""


@dataclass
class Mark:
    t: float
    label: str
    lane: str | None = None  # lanes: the row; None: a vertical line across the figure
    y: float | None = None  # series: the value
    check: str | None = None  # the check this mark belongs to (drawn red when it failed)


@dataclass
class Lane:
    name: str
    #: (t, category) per event
    points: list[tuple[float, str]] = field(default_factory=list)
    #: (start, end, category) spans drawn as bars
    bars: list[tuple[float, float, str]] = field(default_factory=list)


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]] = field(default_factory=list)
    style: str = "dots"  # dots | line | steps


@dataclass
class Figure:
    id: str
    title: str
    kind: str  # lanes | series
    x_label: str = "seconds"
    y_label: str = ""
    origin: float = 0.0
    lanes: list[Lane] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    #: a horizontal reference line in a series figure (a bound), with its label
    bound: tuple[float, str] | None = None
    note: str = ""
    log_y: bool = False
    #: the figure's number in a few words ("longest gap 169 ms"), shown in the matrix cell to compare targets
    headline: str = ""

    def as_dict(self) -> dict[str, Any]:
        self._trim()
        return asdict(self)

    def _trim(self) -> None:
        notes = [self.note] if self.note else []
        per_check: dict[str | None, int] = {}
        kept_marks = []
        for m in self.marks:  # a few marks per check say where; a hundred hide the history
            per_check[m.check] = per_check.get(m.check, 0) + 1
            if per_check[m.check] <= MAX_MARKS_PER_CHECK:
                kept_marks.append(m)
        if len(kept_marks) < len(self.marks):
            notes.append(f"the first {MAX_MARKS_PER_CHECK} marks of each check shown")
            self.marks = kept_marks
        if len(self.lanes) > MAX_LANES:  # the rows with marks first, then the others in order
            notes.append(f"{MAX_LANES} of {len(self.lanes)} rows shown")
            marked = {m.lane for m in self.marks if m.lane is not None}
            keep = {id(lane) for lane in self.lanes if lane.name in marked}
            for lane in self.lanes:
                if len(keep) >= MAX_LANES:
                    break
                keep.add(id(lane))
            self.lanes = [lane for lane in self.lanes if id(lane) in keep][:MAX_LANES]
            shown = {lane.name for lane in self.lanes}
            self.marks = [m for m in self.marks if m.lane is None or m.lane in shown]
        total = sum(len(lane.points) for lane in self.lanes) + sum(len(s.points) for s in self.series)
        if total > MAX_POINTS:
            step = total / MAX_POINTS
            holders: list[Lane | Series] = [*self.lanes, *self.series]
            for holder in holders:
                pts: list[Any] = holder.points
                kept = max(1, int(len(pts) / step))
                holder.points = [pts[int(i * len(pts) / kept)] for i in range(kept)] if pts else pts
            notes.append(f"about {MAX_POINTS:,} of {total:,} points shown, evenly sampled")
        self.note = "; ".join(notes)


def rel(t: float, origin: float) -> float:
    """A wall-clock time as seconds from ``origin``, rounded to the millisecond."""
    return round(t - origin, 3)


@dataclass
class Answer:
    """One request of a request-and-answer scenario, for :func:`answers_figure`."""

    what: str  # the row: what was asked
    good: bool  # answered as the contract says
    answer: str = ""  # what came back, short
    check: str | None = None  # the check that judged it


def answers_figure(fig_id: str, title: str, answers: list[Answer]) -> Figure | None:
    """Each request in the order asked, a dot coloured by whether its answer was the contract's; a
    wrong one marked with what came back (and its check, so a failed check points at it)."""
    if not answers:
        return None
    fig = Figure(fig_id, title, "lanes", x_label="request, in the order asked", y_label="")
    rows: dict[str, Lane] = {}
    for i, a in enumerate(answers):
        lane = rows.get(a.what)
        if lane is None:
            lane = rows[a.what] = Lane(a.what)
            fig.lanes.append(lane)
        lane.points.append((float(i), "as the contract says" if a.good else "not as the contract says"))
        if not a.good:
            fig.marks.append(Mark(float(i), a.answer[:48] or "wrong", a.what, check=a.check))
    return fig


def steps_figure(fig_id: str, title: str, checks: list[Any], *, strip: str = "") -> Figure | None:
    """A scenario of discrete steps with a check each (a probe's requests, a limit reached, a file
    applied): each step in order, as the contract says or not. ``checks``: the case's
    :class:`~.evidence.Check` objects; ``strip``: a regular expression taken out of the names to
    make the rows."""
    answers = []
    for c in checks:
        row = re.sub(strip, "", c.name) if strip else c.name
        answers.append(Answer(row[:60], c.passed, json.dumps(c.observed, default=str)[:48], c.name))
    return answers_figure(fig_id, title, answers)


def ticks_through_phases(
    fig_id: str, title: str, *, x_label: str, y_label: str, phases: list[tuple[str, float, float]],
    tick_times: dict[str, list[float]], gap_bound_s: float, check: str, gaps_from_first_phase: bool = False,
) -> Figure | None:
    """Sessions' ticks (a row each) through the phases of an ordeal (shaded, time 0 at the first);
    each row's longest gap past ``gap_bound_s`` marked for ``check`` (``gaps_from_first_phase``:
    only gaps that begin once the first phase has)."""
    if not tick_times or not phases:
        return None
    origin = phases[0][1]
    fig = Figure(fig_id, title, "lanes", x_label=x_label, y_label=y_label, origin=origin,
                 windows=[Window(rel(a, origin), rel(b, origin), name) for name, a, b in phases])
    for name, times in tick_times.items():
        fig.lanes.append(Lane(name, [(rel(t, origin), "tick") for t in times]))
        gaps = [(b - a, b) for a, b in itertools.pairwise(times) if not gaps_from_first_phase or a >= origin]
        if gaps and max(gaps)[0] > gap_bound_s:
            gap, at = max(gaps)
            fig.marks.append(Mark(rel(at, origin), f"gap {gap:.1f} s", name, check=check))
    return fig
