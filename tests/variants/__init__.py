"""Deliberately broken variants of the reference server (proof that the scenarios bite).

Each module holds one bug, applied as a patch to the reference before it starts
(the master forks its children, so they inherit the patch). Run one as a target:

    python -m tests.variants NAME [reference server options...]

or write its manifest with :func:`write_manifest`. Every variant says which
scenario must catch it, and by which check.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.manifests import derived_manifest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Variant:
    name: str
    bug: str
    scenario: str  # test file under scenarios/, or a node id (file::test) when it holds several
    caught_by: str  # start of the name of the check that must fail


VARIANTS = [
    Variant(
        "sid_reuse",
        "session ids are reused like OS fds and stale ids are not detected",
        "scenarios/test_dead_session_push.py",
        "a new client never receives what was meant for another session",
    ),
    Variant(
        "push_warn_storm",
        "every failed push logs a warning (Swoole's warning storm)",
        "scenarios/test_dead_session_push.py",
        "no warning storm",
    ),
    Variant(
        "sweep_local_only",
        "connections lists only the calling process's own sessions (BASE mode)",
        "scenarios/test_task_sweep.py::test_task_sweep",
        "each sweep saw every session",
    ),
    Variant(
        "close_drops_queue",
        "close() drops the connection without flushing queued data or a close frame",
        "scenarios/test_task_sweep.py::test_task_sweep",
        "every swept client got a close frame",
    ),
    Variant(
        "heartbeat_counts_pushes",
        "what the server pushes counts as activity for the heartbeat",
        "scenarios/test_heartbeat.py",
        "server pushes do not count as activity",
    ),
    Variant(
        "migrate_drops_unparsed",
        "a migrated session loses the bytes its old worker read but had not parsed",
        "scenarios/test_migration.py::test_migration_partial_frames",
        "a frame cut in two by the migration arrives whole",
    ),
    Variant(
        "migrate_loses_pushes",
        "pushes reaching the old worker while the session moves are dropped",
        "scenarios/test_migration.py::test_migration_pushes_in_flight",
        "pushes sent while the session moves arrive exactly once",
    ),
    Variant(
        "migrate_source_fin",
        "the old worker shuts down its copy of the socket (the client gets a FIN)",
        "scenarios/test_migration.py::test_migration_stream",
        "no session is closed by moving it",
    ),
]
VARIANTS += [
    Variant(
        "reload_seed_timers",
        "old workers' timers outlive the reload (not cleared on exit) and push to moved sessions",
        "scenarios/test_reload.py::test_reload_ticks",
        "no tick from an old generation arrives after one from a newer generation",
    ),
    Variant(
        "reload_seed_dead_pushes",
        "old timers check a private set of sessions instead of exists() and push to closed ones",
        "scenarios/test_reload.py::test_reload_disconnects",
        "no push is made to a session after its close is known",
    ),
    Variant(
        "reload_drops_sessions",
        "a reload closes the old workers' sessions with 1001 instead of handing them over",
        "scenarios/test_reload.py::test_reload_ticks",
        "no session is closed by a reload",
    ),
    Variant(
        "reload_twice_at_once",
        "a reload requested while one runs starts a second one instead of being merged",
        "scenarios/test_reload.py::test_reload_ticks",
        "a reload requested while one runs is merged into it",
    ),
]
VARIANTS += [
    Variant(
        "unlisten_keeps_bound",
        "unlisten stops accepting but keeps the socket bound (clients hang in its backlog)",
        "scenarios/test_ports.py::test_port_churn",
        "after unlisten, a fresh process can bind the port at once",
    ),
    Variant(
        "listen_crashes_worker",
        "a listen that fails with EADDRINUSE kills the worker that asked",
        "scenarios/test_ports.py::test_port_errors",
        "a conflicting or invalid listen changes nothing",
    ),
]
VARIANTS += [
    Variant(
        "bcast_no_handshake_check",
        "a broadcast to @all is pushed to every listed connection, handshake complete or not",
        "scenarios/test_broadcast.py::test_broadcast_fanout[pubsub]",
        "sessions mid-handshake receive nothing",
    ),
    Variant(
        "bcast_blocking_subscribe",
        "a worker subscribes to Redis itself with a blocking client (its event loop freezes)",
        "scenarios/test_broadcast.py::test_broadcast_fanout[pubsub]",
        "every subscribe and unsubscribe is answered ok",
    ),
    Variant(
        "bcast_double_delivery",
        "publish delivers to the local members at once and again when Redis sends it back",
        "scenarios/test_broadcast.py::test_broadcast_fanout[pubsub]",
        "each session receives each message of its channels exactly once",
    ),
]
VARIANTS += [
    Variant(
        "sweep_skips_handshaking",
        "connections lists established sessions only: a sweep never sees a session mid-handshake",
        "scenarios/test_task_sweep.py::test_task_sweep_handshaking",
        "each sweep saw the sessions whose handshake is not complete",
    ),
    Variant(
        "closing_is_gone",
        "a push to a session that is closing fails with 1005 (as if gone), not 1004",
        "scenarios/test_closing.py",
        "a push to a session that is closing fails with 1004",
    ),
    Variant(
        "own_timer_pushes_closing",
        "a session's own timer pushes without exists() while the session is closing",
        "scenarios/test_closing.py",
        "a session's own timer never pushes once its close is known",
    ),
]
VARIANTS += [
    Variant(
        "reload_forgets_counters",
        "the counters of processes a reload retired die with them: /v1/stats goes down",
        "scenarios/test_reload.py::test_reload_ticks",
        "no standard counter ever decreases across a reload",
    ),
    Variant(
        "reload_generation_skips",
        "reload n starts generation n + 2 instead of n + 1",
        "scenarios/test_reload.py::test_reload_ticks",
        "reload n starts generation n + 1",
    ),
]
VARIANTS += [
    Variant(
        "migrate_forgets_bind",
        "the worker that adopts a session resets its uid and protection",
        "scenarios/test_migration.py::test_migration_stream",
        "uid, protection, group and handler set survive every move",
    ),
    Variant(
        "reload_forgets_bind",
        "the worker that adopts a session on a reload resets its uid and protection",
        "scenarios/test_reload.py::test_reload_ticks",
        "uid, protection, group and handler set survive every reload",
    ),
]
VARIANTS += [
    Variant(
        "ports_file_rebinds_handler",
        "a ports-file entry whose handler set changed is re-bound instead of updated in place",
        "scenarios/test_ports.py::test_ports_file",
        "an entry whose only change is its handler is updated in place",
    ),
]
VARIANTS += [
    Variant(
        "durable_fresh_from_dollar",
        "durable mode reads a channel new to the node from $, losing what was added after the subscribe reply",
        "scenarios/test_broadcast.py::test_broadcast_history",
        "a message added right after the subscribe reply to a channel new to the worker arrives",
    ),
]
VARIANTS += [
    Variant(
        "output_unbounded",
        "a client that does not read is never closed: its output queues without bound",
        "scenarios/test_hostile.py",
        "a client that does not read is closed with 4429",
    ),
    Variant(
        "uid_unchecked",
        "bind passes any integer to the session table, which marks the record before packing it",
        "scenarios/test_hostile.py",
        "every bad request gets exactly one reply",
    ),
    Variant(
        "kill_forgets_counters",
        "the counters of a worker killed by a signal die with it: /v1/stats goes down",
        "scenarios/test_faults.py::test_fault_worker_kill",
        "no standard counter decreases",
    ),
    Variant(
        "worker_death_ghosts",
        "a dead worker's sessions stay in the session table: ghosts listed by /v1/sessions",
        "scenarios/test_faults.py::test_fault_worker_kill",
        "each session of the killed worker is kept",
    ),
    Variant(
        "stall_blind",
        "the master does not notice a stopped worker and keeps sending it a share of new connections",
        "scenarios/test_faults.py::test_fault_worker_stall",
        "new connections made during the stall are served",
    ),
    Variant(
        "retire_waits_for_stalled",
        "old workers of a reload wait for a stopped peer without limit: the healthy ones are killed at their deadline",
        "scenarios/test_faults.py::test_fault_worker_stall_reload",
        "the reload kills no process but the stopped one",
    ),
    Variant(
        "tasks_lost_silently",
        "the tasks of a task worker that died are forgotten without a word to the submitter",
        "scenarios/test_faults.py::test_fault_task_worker_kill",
        "every task accepted before the kill gets exactly one",
    ),
    Variant(
        "broadcaster_death_unreported",
        "the broadcaster's death is no outage: what pub/sub loses meanwhile is unexplained",
        "scenarios/test_broadcast.py::test_fault_broadcaster[pubsub]",
        "the target reports the outage window",
    ),
    Variant(
        "utf8_unchecked",
        "invalid UTF-8 in text messages is replaced and served instead of failing the connection with 1007",
        "scenarios/test_protocol.py",
        "UTF-8: valid text taken whole",
    ),
    Variant(
        "fd_limit_fatal",
        "workers take connections until they run out of descriptors, then stop on the first that arrives without one",
        "scenarios/test_fd_exhaustion.py",
        "no process exits",
    ),
]
BY_NAME = {v.name: v for v in VARIANTS}

#: The case (scenario id, with its parameter if any) each variant must fail, as reports name it.
EXPECTED_CASE = {
    "sid_reuse": "dead_session_push",
    "push_warn_storm": "dead_session_push",
    "sweep_local_only": "task_sweep",
    "close_drops_queue": "task_sweep",
    "heartbeat_counts_pushes": "heartbeat",
    "migrate_drops_unparsed": "migration_partial_frames",
    "migrate_loses_pushes": "migration_pushes_in_flight",
    "migrate_source_fin": "migration_stream",
    "reload_seed_timers": "reload_ticks",
    "reload_seed_dead_pushes": "reload_disconnects",
    "reload_drops_sessions": "reload_ticks",
    "reload_twice_at_once": "reload_ticks",
    "unlisten_keeps_bound": "port_churn",
    "listen_crashes_worker": "port_errors",
    "bcast_no_handshake_check": "broadcast_fanout[pubsub]",
    "bcast_blocking_subscribe": "broadcast_fanout[pubsub]",
    "bcast_double_delivery": "broadcast_fanout[pubsub]",
    "sweep_skips_handshaking": "task_sweep_handshaking",
    "reload_forgets_counters": "reload_ticks",
    "reload_generation_skips": "reload_ticks",
    "migrate_forgets_bind": "migration_stream",
    "reload_forgets_bind": "reload_ticks",
    "ports_file_rebinds_handler": "ports_file",
    "durable_fresh_from_dollar": "broadcast_history",
    "closing_is_gone": "closing_session",
    "own_timer_pushes_closing": "closing_session",
    "output_unbounded": "hostile_client",
    "uid_unchecked": "hostile_client",
    "kill_forgets_counters": "fault_worker_kill",
    "worker_death_ghosts": "fault_worker_kill",
    "fd_limit_fatal": "fd_exhaustion",
    "stall_blind": "fault_worker_stall",
    "retire_waits_for_stalled": "fault_worker_stall_reload",
    "tasks_lost_silently": "fault_task_worker_kill",
    "broadcaster_death_unreported": "fault_broadcaster[pubsub]",
    "utf8_unchecked": "protocol_conformance",
}


def apply(name: str) -> None:
    importlib.import_module(f"tests.variants.{name}").apply()


def patch(owner: Any, name: str, replacement: Any) -> Any:
    """Replace ``owner.name`` (a class's or a module's attribute) by ``replacement``; the original.

    A variant patches the reference by name. If the reference renamed or moved that
    attribute, setting it would add a new attribute nobody calls, and the variant would
    silently be the correct server: so a name the owner does not have is an error.
    """
    if not hasattr(owner, name):
        where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
        raise AttributeError(f"variant patch point {where}.{name} does not exist (renamed or moved?)")
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    return original


def write_manifest(
    name: str, directory: Path, *, known_failure: bool = False, checks: list[str] | None = None
) -> Path:
    """A manifest for variant ``name``: the reference's, started through the variant.

    With ``known_failure``, the manifest lists the case the variant breaks
    under ``[known_failures]``: the comparison then shows it as a known
    deviation, and fails if the case passes (the scenario no longer bites).
    With ``checks`` too, the entry names the checks it must fail by (1.1).
    """
    extra = ""
    if known_failure:
        reason = f"broken on purpose: {BY_NAME[name].bug}".replace('"', "'")
        if checks is None:
            extra = f'\n[known_failures]\n"{EXPECTED_CASE[name]}" = "{reason}"\n'
        else:
            extra = (
                f'\n[known_failures."{EXPECTED_CASE[name]}"]\nreason = "{reason}"\n'
                f"checks = {json.dumps(checks)}\n"
            )
    return derived_manifest(
        directory / f"variant-{name}.toml",
        module=["tests.variants", name],
        name=f"variant-{name}",
        description=f"BROKEN on purpose: {BY_NAME[name].bug}",
        extra=extra,
    )
