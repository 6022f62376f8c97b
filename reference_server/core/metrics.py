"""Counters kept by each process, and their Prometheus text rendering (pure).

Every process keeps its own :class:`Counters`; the admin process gathers them
(``stats`` RPC) and sums them. Names are the contract's standard counter names
(see ``docs/contract-v1.md``), so a harness can compare targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

#: Standard counters, with their help text (contract section 6).
STANDARD_COUNTERS: dict[str, str] = {
    "connections_accepted": "TCP connections accepted and handed to a worker",
    "sessions_opened": "WebSocket handshakes completed",
    "sessions_closed": "Sessions whose socket was released",
    "handshake_failed": "Connections closed before the WebSocket handshake completed",
    "messages_received": "WebSocket messages received from clients",
    "pushes": "push() calls that were accepted for delivery",
    "push_failed": "push() calls that failed (any reason)",
    "dead_session_pushes": "push() calls to a session that does not exist or is closing",
    "pushes_lost_in_flight": "Pushes accepted for a live session that closed before they reached it",
    "closes_requested": "close() calls accepted",
    "heartbeat_closes": "Sessions closed by the heartbeat for idleness",
    "sweep_closes": "Sessions closed by the task process's sweep rule",
    "tasks_dispatched": "task() calls sent to a task worker",
    "tasks_done": "Tasks run to completion by a task worker",
    "tasks_finished": "finish() results delivered back to the origin",
    "timers_created": "Timers created (tick and after)",
    "timers_cleared": "Timers cleared (clear, clear_all, or by the framework)",
    "ipc_send_failed": "Messages to another process that could not be sent",
    "log_suppressed": "Log lines suppressed by rate limiting",
    "protocol_errors": "Sessions closed for a protocol violation by the client",
    "migrations_out": "Sessions handed over to another worker (counted by the source)",
    "migrations_in": "Sessions adopted from another worker (counted by the target)",
    "migrations_failed": "Moves that failed; the session went on in its source",
    "migration_forwards": "Operations forwarded to a session's new owner while or after it moved",
    "tasks_handed_back": "Queued tasks a retiring task worker handed to its successor",
    "tasks_lost": "Tasks whose task worker died before their result came (reported to the submitter)",
}

#: Counters kept by the master about reloads (added to the above in /metrics).
RELOAD_COUNTERS: dict[str, str] = {
    "reloads_requested": "Reload requests (signals, admin API, reload() from any process)",
    "reloads_merged": "Reload requests merged into the reload already running",
    "reloads_completed": "Reloads whose old processes have all exited",
    "reloads_forced_kills": "Old processes killed for outliving max_wait_ms during a reload",
}


class Counters(Counter):
    """A ``collections.Counter`` of named event counts."""

    def snapshot(self) -> dict[str, int]:
        return {name: int(v) for name, v in sorted(self.items())}


def merge(snapshots: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for snap in snapshots:
        total.update(snap)
    return {k: int(v) for k, v in sorted(total.items())}


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(
    counters: Mapping[str, int],
    gauges: Mapping[str, float],
    labelled_gauges: Mapping[str, list[tuple[dict[str, object], float]]],
    *,
    labelled_counters: Mapping[str, list[tuple[dict[str, object], float]]] | None = None,
    prefix: str = "refsrv_",
) -> str:
    """Render counters (``_total``) and gauges in the Prometheus text format 0.0.4."""
    lines: list[str] = []
    for name in sorted(set(counters) | set(STANDARD_COUNTERS)):
        metric = f"{prefix}{name}_total"
        help_text = STANDARD_COUNTERS.get(name) or RELOAD_COUNTERS.get(name) or name.replace("_", " ")
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} counter")
        lines.append(f"{metric} {int(counters.get(name, 0))}")
    for name, value in sorted(gauges.items()):
        lines.append(f"# TYPE {prefix}{name} gauge")
        lines.append(f"{prefix}{name} {value:g}")
    for kind, suffix, table in (("gauge", "", labelled_gauges), ("counter", "_total", labelled_counters or {})):
        for name, samples in sorted(table.items()):
            lines.append(f"# TYPE {prefix}{name}{suffix} {kind}")
            for labels, value in samples:
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{prefix}{name}{suffix}{{{rendered}}} {value:g}")
    return "\n".join(lines) + "\n"
