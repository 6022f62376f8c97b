"""Drawing the figures of a case's evidence (``scenarios/harness/figures.py``) as PNG, with matplotlib.

:func:`draw` turns one figure (its JSON form) into PNG bytes; :func:`draw_evidence` draws every
figure of one evidence file into ``<evidence>.<figure id>.png`` next to it. The plugin runs
:func:`draw_evidence` in a process of its own at the lowest priority while the run goes on, and
at the harness's priority once it is over (:class:`Drawer`), so drawing costs the suite almost
nothing; the evidence pages embed the
files (``data:`` URIs, so a page works offline from ``file://``).

A mark that names a failed check is drawn red and larger, with its label: the place in the
figure where the check failed.
"""

from __future__ import annotations

import io
import json
import os
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

#: Categories' colours in order of first appearance (the matplotlib "tab10" cycle).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728"]
FAILED = "#d62728"
WINDOWS = ("#f2c14e", "#9ecae1")


def png_path(evidence_path: Path, figure_id: str) -> Path:
    return evidence_path.with_name(f"{evidence_path.stem}.{figure_id}.png")


def _colours(categories: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for cat in categories:
        if cat not in out:
            out[cat] = PALETTE[len(out) % len(PALETTE)]
    return out


def draw(fig: dict[str, Any], failed_checks: set[str] | frozenset[str] = frozenset()) -> bytes:
    """One figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lanes = fig.get("lanes") or []
    height = 3.2 if fig["kind"] != "lanes" else min(7.5, max(2.6, 0.9 + 0.16 * len(lanes)))
    f, ax = plt.subplots(figsize=(10, height), dpi=90)
    try:
        for i, w in enumerate(fig.get("windows") or []):  # two colours in turn: adjacent windows stay apart
            ax.axvspan(w["start"], max(w["end"], w["start"] + 0.002), color=WINDOWS[i % 2], alpha=0.35, lw=0)
        if fig["kind"] == "lanes":
            _draw_lanes(ax, fig, lanes)
        else:
            _draw_series(ax, fig)
        _draw_windows_labels(ax, fig)
        _draw_marks(ax, fig, failed_checks)
        ax.set_xlabel(fig.get("x_label") or "seconds", loc="left")
        if fig.get("y_label"):
            ax.set_ylabel(fig["y_label"])
        ax.set_title(fig.get("title", ""), fontsize=10, loc="left", pad=28 if fig.get("windows") else 6)
        if fig.get("note"):  # below the axes, right: the window labels take the space above them
            ax.annotate(fig["note"], (1.0, 0.0), xycoords="axes fraction", xytext=(0, -26), textcoords="offset points",
                        ha="right", va="top", fontsize=7, color="#666", annotation_clip=False)
        ax.grid(axis="x", color="#ddd", lw=0.5)
        f.tight_layout()
        buf = io.BytesIO()
        f.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(f)


def _draw_lanes(ax: Any, fig: dict[str, Any], lanes: list[dict[str, Any]]) -> None:
    cats = [c for lane in lanes for _, c in lane.get("points", [])] + [b[2] for lane in lanes for b in lane.get("bars", [])]
    colours = _colours(cats)
    # One marker for the whole figure (a thin bar where rows are dense): a category drawn
    # otherwise than its neighbours looks sparser or denser than it is.
    marker = "|" if max((len(lane.get("points", [])) for lane in lanes), default=0) > 200 else "o"
    for i, lane in enumerate(lanes):
        for start, end, cat in lane.get("bars", []):
            ax.barh(i, max(end - start, 0.002), left=start, height=0.5, color=colours[cat], alpha=0.35, lw=0)
        by_cat: dict[str, list[float]] = {}
        for t, cat in lane.get("points", []):
            by_cat.setdefault(cat, []).append(t)
        for cat, ts in by_cat.items():
            ax.scatter(ts, [i] * len(ts), s=5, color=colours[cat], marker=marker, lw=0.8)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([lane["name"] for lane in lanes], fontsize=6 if len(lanes) > 20 else 8)
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.invert_yaxis()
    handles = [ax.scatter([], [], s=20, color=c, label=cat) for cat, c in colours.items()]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _draw_series(ax: Any, fig: dict[str, Any]) -> None:
    series = fig.get("series") or []
    colours = _colours([s["name"] for s in series])
    for s in series:
        pts = s.get("points") or []
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if s.get("style") == "line":
            ax.plot(xs, ys, lw=1, color=colours[s["name"]], label=s["name"])
        elif s.get("style") == "steps":
            ax.step(xs, ys, where="post", lw=1, color=colours[s["name"]], label=s["name"])
        else:
            ax.scatter(xs, ys, s=4, color=colours[s["name"]], label=s["name"])
    if fig.get("bound"):
        value, label = fig["bound"]
        ax.axhline(value, color=FAILED, lw=0.8, ls="--")
        ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), fontsize=7, color=FAILED, va="bottom")
    if fig.get("log_y"):
        ax.set_yscale("symlog", linthresh=1)
        if all(p[1] >= 0 for s in series for p in s.get("points") or []):
            ax.set_ylim(bottom=0)  # from zero, so that a decade (1, 10, 100...) is in view: values between two had no label
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _draw_windows_labels(ax: Any, fig: dict[str, Any]) -> None:
    for i, w in enumerate(w for w in fig.get("windows") or [] if w.get("label")):
        ax.annotate(w["label"], (w["start"], 1.0), xytext=(0, 1 + 8 * (i % 3)), textcoords="offset points",
                    xycoords=("data", "axes fraction"), fontsize=7, color="#8a6d00", va="bottom", clip_on=False)


def _draw_marks(ax: Any, fig: dict[str, Any], failed: set[str] | frozenset[str]) -> None:
    names = [lane["name"] for lane in fig.get("lanes") or []]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}  # marks on one spot: one ring, their labels joined
    for m in fig.get("marks") or []:
        key = (m.get("lane"), m.get("y"), round(m["t"], 2), bool(m.get("check")) and m["check"] in failed)
        if key in merged:
            first = merged[key]
            first["label"] = first["label"] if len(first["label"]) > 40 else f"{first['label']}, {m['label']}"
        else:
            merged[key] = dict(m)
    for m in merged.values():
        bad = bool(m.get("check")) and m["check"] in failed
        colour = FAILED if bad else "#333"
        if m.get("lane") is not None:
            if m["lane"] not in names:
                continue  # its row is not shown
            y = names.index(m["lane"])
        elif m.get("y") is not None:
            y = m["y"]
        else:
            ax.axvline(m["t"], color=colour, lw=1.2 if bad else 0.7, ls="-" if bad else ":")
            ax.annotate(m["label"], (m["t"], 0.02), xycoords=("data", "axes fraction"), fontsize=7, color=colour,
                        rotation=90, va="bottom", ha="right")
            continue
        ax.scatter([m["t"]], [y], s=90 if bad else 40, facecolors="none", edgecolors=colour, lw=1.5, zorder=5)
        ax.annotate(("✗ " if bad else "") + m["label"], (m["t"], y), xytext=(6, -9), textcoords="offset points",
                    fontsize=7, color=colour, zorder=6, fontweight="bold" if bad else "normal")


def draw_evidence(evidence_path: str) -> list[str]:
    """Draw every figure of one evidence file next to it; the PNG files written.

    Each file is written whole or not at all (a temporary file renamed), so a drawer stopped
    midway leaves no half image for a page to embed."""
    path = Path(evidence_path)
    doc = json.loads(path.read_text())
    failed = {c["name"] for c in doc.get("checks", []) if not c.get("passed")}
    written = []
    for fig in doc.get("figures") or []:
        out = png_path(path, fig["id"])
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(draw(fig, failed))
        os.replace(tmp, out)
        written.append(str(out))
    return written


#: The drawer's priority while the run goes on (added to the harness's niceness): the lowest.
DRAWING_NICE = 19


def _serve(jobs: Any, done: Any) -> None:
    """The drawer process: draws each evidence path it is given until ``None``; sends
    ``(path, problem or None)`` for each on ``done`` (a pipe: no thread of its own, so the one
    thread of this process carries the priority the harness gives it)."""
    while (path := jobs.get()) is not None:
        try:
            draw_evidence(path)
            done.send((path, None))
        except Exception as exc:  # a figure that cannot be drawn must not stop the others
            done.send((path, f"{Path(path).name}: {type(exc).__name__}: {exc}"))


def _set_priority(pid: int, niceness: int) -> None:
    """Set every thread of ``pid`` to ``niceness`` (Linux keeps it per thread). Raising a priority
    needs privilege: ``PermissionError`` otherwise."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)


class Drawer:
    """Draws evidence files' figures in one process of its own beside the run (started on first use).

    While the run goes on, the process runs at the lowest priority (nice 19, set by the harness
    as soon as it starts), so no scenario's timing waits on a figure. When the run ends
    (:meth:`finish`), nothing's timing is at stake any more, and a nice-19 process on a busy
    machine can be starved for minutes (where the kernel does not group processes by session,
    nice counts machine-wide: beside three busy loops at nice 0 it got about 1 % of a CPU, and a
    one-case run took 111 s instead of 15). So ``finish`` gives the process the harness's own
    priority, or, where that is not allowed (only a privileged user may raise a priority), stops
    it and draws what is left in a new process at the harness's priority.
    """

    def __init__(self) -> None:
        self._ctx = get_context("spawn")
        self._proc: Any = None
        self._jobs: Any = None
        self._done: Any = None
        self._pending: list[str] = []
        self._problems: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self, nice: int) -> None:
        self._jobs = self._ctx.Queue()
        self._done, child_end = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(target=_serve, args=(self._jobs, child_end), name="figure-drawer", daemon=True)
        self._proc.start()
        child_end.close()
        if nice:
            try:  # lowering a priority is always allowed; it has one thread yet
                _set_priority(self._proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
            except OSError:
                pass

    def submit(self, evidence_path: Path) -> None:
        if self._proc is None:
            self._start(DRAWING_NICE)
        while self._collect(0):  # what it has finished, so its pipe never fills
            pass
        self._pending.append(str(evidence_path))
        self._jobs.put(str(evidence_path))

    def _collect(self, timeout: float) -> bool:
        """Take one report, waiting at most ``timeout``; whether there was one."""
        try:
            if not self._done.poll(timeout):
                return False
            path, problem = self._done.recv()
        except (EOFError, OSError):  # the process is gone
            return False
        self._pending.remove(path)
        if problem:
            self._problems.append(problem)
        return True

    def hurry(self) -> bool:
        """Give the drawer the harness's own priority: the run is over. If that is not allowed,
        stop it and start a new one at this priority with what is left; whether it was reniced."""
        if self._proc is None:
            return True
        try:
            _set_priority(self._proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
            return True
        except (PermissionError, ProcessLookupError):
            pass
        while self._collect(0):  # what it finished; what it is drawing now is drawn again
            pass
        self._stop()
        if self._pending:
            self._start(0)
            for path in self._pending:
                self._jobs.put(path)
        return False

    def _stop(self) -> None:
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.join(5)
        self._jobs.cancel_join_thread()
        self._jobs.close()
        self._done.close()
        self._proc = None

    def finish(self, timeout: float = 120.0) -> list[str]:
        """Wait for every drawing (at most ``timeout`` in all, at the harness's priority), stop
        the process; the problems met, each naming its evidence file."""
        if self._proc is None:
            return []
        self.hurry()
        deadline = time.monotonic() + timeout
        while self._pending and (left := deadline - time.monotonic()) > 0:
            if not self._collect(min(left, 1.0)) and not self._proc.is_alive():  # all it sent is read
                break
        if self._pending:
            alive = self._proc.is_alive()
            why = f"not drawn within {timeout:g} s" if alive else f"not drawn: the drawer ended (exit code {self._proc.exitcode})"
            self._problems.append(
                f"{len(self._pending)} evidence file(s) {why} (first: {Path(self._pending[0]).name}); "
                "their pages draw the figures themselves"
            )
        else:
            self._jobs.put(None)
            self._proc.join(10)
        self._stop()  # kills only what did not end
        problems, self._problems, self._pending = self._problems, [], []
        return problems
