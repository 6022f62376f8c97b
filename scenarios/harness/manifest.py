"""Target manifests (contract section 2): how to start, ready-check and stop a target.

A manifest is TOML. Errors name the file and the key. Placeholders in the
start command and the ready URL are filled by :meth:`Manifest.render`.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import CONTRACT_VERSIONS

#: Capabilities defined by contract version 1 (later versions add more).
KNOWN_CAPABILITIES = {
    "task_sweep": "a task process can list, inspect, push to and close every session (section 4.3)",
    "dead_session_stats": "push to a dead session fails with 1004/1005 and is counted (section 3.4)",
    "heartbeat": "idle sessions are closed with 4408; protect() exempts (section 3.6)",
    "fd_reuse_info": "session info includes the OS fd in the owner (os_fd)",
    "migrate": "live sessions move between workers: admin migrate/affinity/rebalance, app op migrate (section 7)",
    "reload": "a new generation of workers takes over live sessions: admin reload/reloads, app op reload (section 8)",
    "reload_signals": "SIGUSR1 to the started process reloads everything, SIGUSR2 the task workers (section 8)",
    "dynamic_ports": "listen/unlisten/listeners at run time from the admin API and the app ops, per-port limit and "
    "handler set, keep/close policy (section 9)",
    "ports_file": "the target watches the TOML ports file given as {ports_file} and applies it (section 9.4)",
    "redis_broadcast": "messages published to Redis reach every established session of their channel, on every "
    "node sharing that Redis, exactly once and in order; subscribe/unsubscribe/publish ops (section 10)",
}
PLACEHOLDERS = {
    "python",
    "manifest_dir",
    "port",
    "admin_port",
    "admin_token",
    "redis_url",
    "workers",
    "task_workers",
    "heartbeat_idle_ms",
    "heartbeat_check_ms",
    "max_wait_ms",
    "ports_file",
    "broadcast_mode",
    "log_level",
    "open_files",
}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class ManifestError(ValueError):
    pass


@dataclass
class Manifest:
    path: Path
    name: str
    contract: str  # "1", "1.1" or "1.2": every version is judged by the same rules (contract: Versioning)
    description: str
    command: list[str]
    cwd: Path
    env: dict[str, str]
    ready_url: str
    ready_timeout: float
    stop_signal: str
    stop_timeout: float
    capabilities: set[str]
    known_failures: dict[str, str] = field(default_factory=dict)
    #: (1.1) the checks a known failure must fail by, per case key (absent: any failure will do).
    known_failure_checks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: (1.1) cases whose known failure shows only in some runs (a race in the target): passing is no stale list.
    known_failure_intermittent: set[str] = field(default_factory=set)
    #: dynamic_ports: how long after its answer a listen/unlisten may still be taking effect.
    ports_grace_ms: float = 0.0
    #: redis_broadcast (section 10): Redis name of channel C is prefix + C.
    broadcast_prefix: str = "bc:"
    #: redis_broadcast: the modes the target can run in ({broadcast_mode}).
    broadcast_modes: tuple[str, ...] = ("pubsub",)
    #: redis_broadcast: the per-session output bound past which a slow client is closed with 4429.
    broadcast_buffer_bytes: int = 1 << 20
    #: heartbeat (1.1): the step of the target's heartbeat settings (1000: whole seconds, as Swoole's).
    heartbeat_granularity_ms: int = 1
    #: [limits] (1.2, section 12.2): the output a session may have waiting before it is closed with 4429.
    output_bytes: int = 16 << 20
    message_bytes: int = 1 << 20  # the largest message the target takes (1.2: [limits] message_bytes)
    #: [install] (1.1): a command that exits 0 when the target can start here, and how to install it.
    install_check: list[str] = field(default_factory=list)
    install_hint: str = ""

    def install_problem(self) -> str | None:
        """None when the target can start here; else why not and how to install it (``[install]``).

        Runs ``install.check`` in the start folder (at most 60 s); a target without one is
        taken as installed.
        """
        if not self.install_check:
            return None
        try:
            proc = subprocess.run(self.install_check, cwd=self.cwd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            said = str(exc)
        else:
            if proc.returncode == 0:
                return None
            said = ((proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"exit {proc.returncode}"])[0]
        return f"{self.name} is not installed here ({said}); install it with: {self.install_hint or 'see its manifest'}"

    @property
    def uses_redis(self) -> bool:
        return any("{redis_url}" in part for part in self.command)

    def render(self, values: dict[str, Any]) -> tuple[list[str], str]:
        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)

        return [fill(part) for part in self.command], fill(self.ready_url)


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None

    def get(table: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise ManifestError(f"{path}: missing {where}{key}")
            return default
        value = table[key]
        if not isinstance(value, kind):
            wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ManifestError(f"{path}: {where}{key} must be {wanted}, got {type(value).__name__}")
        return value

    if "contract" not in data:
        raise ManifestError(f"{path}: missing contract (the version the target implements: 1, \"1.1\" or \"1.2\")")
    contract = str(data["contract"])
    if contract not in CONTRACT_VERSIONS:
        raise ManifestError(
            f"{path}: contract {data['contract']!r} is not supported (this harness speaks {', '.join(CONTRACT_VERSIONS)})"
        )
    start = get(data, "start", dict, "")
    command = get(start, "command", list, "start.")
    if not command or not all(isinstance(p, str) for p in command):
        raise ManifestError(f"{path}: start.command must be a non-empty list of strings")
    for part in command:
        for name in _PLACEHOLDER.findall(part):
            if name not in PLACEHOLDERS:
                raise ManifestError(f"{path}: start.command uses unknown placeholder {{{name}}}")
    ready = get(data, "ready", dict, "")
    stop = get(data, "stop", dict, "", {})
    caps = get(data, "capabilities", dict, "", {})
    declared = get(caps, "declared", list, "capabilities.", [])
    unknown = [c for c in declared if c not in KNOWN_CAPABILITIES]
    if unknown:
        raise ManifestError(f"{path}: capabilities.declared has unknown capabilities {unknown}")
    known = get(data, "known_failures", dict, "", {})
    reasons, by_checks, intermittent = _known_failures(path, known)
    ports = get(data, "ports", dict, "", {})
    grace = get(ports, "grace_ms", (int, float), "ports.", 0)
    if grace < 0 or grace > 10_000:
        raise ManifestError(f"{path}: ports.grace_ms must be 0..10000, got {grace}")
    env = get(start, "env", dict, "start.", {})
    bcast = get(data, "broadcast", dict, "", {})
    prefix = get(bcast, "prefix", str, "broadcast.", "bc:")
    modes = get(bcast, "modes", list, "broadcast.", ["pubsub"])
    if not modes or any(m not in ("pubsub", "durable") for m in modes):
        raise ManifestError(f"{path}: broadcast.modes must list 'pubsub' and/or 'durable', got {modes}")
    buffer_bytes = get(bcast, "buffer_bytes", int, "broadcast.", 1 << 20)
    if not 4096 <= buffer_bytes <= 64 << 20:
        raise ManifestError(f"{path}: broadcast.buffer_bytes must be 4096..67108864, got {buffer_bytes}")
    beat = get(data, "heartbeat", dict, "", {})
    granularity = get(beat, "granularity_ms", int, "heartbeat.", 1)
    if not 1 <= granularity <= 10_000:
        raise ManifestError(f"{path}: heartbeat.granularity_ms must be 1..10000, got {granularity}")
    limits = get(data, "limits", dict, "", {})
    output_bytes = get(limits, "output_bytes", int, "limits.", 16 << 20)
    if not 65536 <= output_bytes <= 256 << 20:
        raise ManifestError(f"{path}: limits.output_bytes must be 65536..268435456, got {output_bytes}")
    message_bytes = get(limits, "message_bytes", int, "limits.", 1 << 20)
    if not 65536 <= message_bytes <= 64 << 20:
        raise ManifestError(f"{path}: limits.message_bytes must be 65536..67108864, got {message_bytes}")
    install = get(data, "install", dict, "", {})
    check = get(install, "check", list, "install.", [])
    if not all(isinstance(p, str) for p in check):
        raise ManifestError(f"{path}: install.check must be a list of strings")
    return Manifest(
        path=path,
        name=get(data, "name", str, ""),
        contract=contract,
        description=get(data, "description", str, "", ""),
        command=command,
        cwd=(path.parent / get(start, "cwd", str, "start.", ".")).resolve(),
        env={str(k): str(v) for k, v in env.items()},
        ready_url=get(ready, "http", str, "ready."),
        ready_timeout=float(get(ready, "timeout_s", (int, float), "ready.", 20)),
        stop_signal=get(stop, "signal", str, "stop.", "SIGTERM"),
        stop_timeout=float(get(stop, "timeout_s", (int, float), "stop.", 10)),
        capabilities=set(declared),
        known_failures=reasons,
        known_failure_checks=by_checks,
        known_failure_intermittent=intermittent,
        ports_grace_ms=float(grace),
        broadcast_prefix=prefix,
        broadcast_modes=tuple(modes),
        broadcast_buffer_bytes=buffer_bytes,
        heartbeat_granularity_ms=granularity,
        output_bytes=output_bytes,
        message_bytes=message_bytes,
        install_check=check,
        install_hint=get(install, "hint", str, "install.", ""),
    )


def _known_failures(
    path: Path, known: dict[str, Any]
) -> tuple[dict[str, str], dict[str, tuple[str, ...]], set[str]]:
    """``[known_failures]``: case -> reason, or (1.1) case -> {reason, checks, intermittent}.

    ``checks`` names the checks the case must fail by (section 11.2): a known failure
    that fails otherwise is a new bug, not the one the reason states. ``intermittent``
    (default false): the failure is a race of the target that shows in some runs only,
    so a run that passes the case is not a stale list.
    """
    reasons: dict[str, str] = {}
    by_checks: dict[str, tuple[str, ...]] = {}
    intermittent: set[str] = set()
    for key, value in known.items():
        if isinstance(value, str):
            reasons[str(key)] = value
            continue
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: known_failures.{key!r} must be a reason (string) or a table {{reason, checks}}")
        reason, checks = value.get("reason"), value.get("checks")
        extra = sorted(set(value) - {"reason", "checks", "intermittent"})
        if not isinstance(reason, str) or not reason:
            raise ManifestError(f"{path}: known_failures.{key!r}.reason must be a non-empty string")
        if not isinstance(checks, list) or not checks or not all(isinstance(c, str) and c for c in checks):
            raise ManifestError(f"{path}: known_failures.{key!r}.checks must be a non-empty list of check names")
        if extra:
            raise ManifestError(
                f"{path}: known_failures.{key!r} has unknown keys {extra} (allowed: reason, checks, intermittent)"
            )
        if not isinstance(value.get("intermittent", False), bool):
            raise ManifestError(f"{path}: known_failures.{key!r}.intermittent must be true or false")
        reasons[str(key)] = reason
        by_checks[str(key)] = tuple(checks)
        if value.get("intermittent", False):
            intermittent.add(str(key))
    return reasons, by_checks, intermittent
