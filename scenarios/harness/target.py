"""Start a target from its manifest, wait until it is ready, and stop it for good.

The target runs in its own session (process group), so that stopping can
reach every process it forked even if its supervisor misbehaves: after the
stop signal and the manifest's timeout, the whole group is killed, and
:meth:`Target.stop` reports whether anything had to be killed or outlived it.
"""

from __future__ import annotations

import os
import resource
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import Manifest

DEFAULT_PROFILE: dict[str, Any] = {
    "workers": 3,
    "task_workers": 1,
    "heartbeat_idle_ms": 0,
    "heartbeat_check_ms": 0,
    "max_wait_ms": 3000,
    "broadcast_mode": "pubsub",
    "log_level": "info",
    "open_files": None,  # None: the harness's own limit; a number: the target runs under ulimit -n that
}


def under_open_files_limit(command: list[str], limit: int | None) -> list[str]:
    """``command`` run under ``ulimit -n limit`` (soft and hard), through ``/bin/sh``; as is for None.

    The limit is set by a shell that then execs the command (same pid), not by a pre-exec hook,
    which would not be safe in the harness: it has threads.
    """
    if limit is None:
        return command
    return ["/bin/sh", "-c", 'ulimit -n "$1" && shift && exec "$@"', "sh", str(int(limit)), *command]


def own_open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class TargetStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StopReport:
    exit_code: int | None
    forced: bool
    leftover_pids: list[int] = field(default_factory=list)
    duration_s: float = 0.0


class Target:
    """One running instance of a target."""

    def __init__(self, manifest: Manifest, *, profile: dict[str, Any], redis_url: str, log_path: Path) -> None:
        self.manifest = manifest
        self.profile = {**DEFAULT_PROFILE, **profile}
        self.redis_url = redis_url
        self.log_path = log_path
        self.port = 0
        self.admin_port = 0
        self.admin_token = secrets.token_hex(12)
        self.proc: subprocess.Popen | None = None
        #: The ports file the target watches (capability ``ports_file``); starts empty.
        self.ports_file = log_path.with_name(log_path.stem + ".ports.toml")
        self.stop_report: StopReport | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def capabilities(self) -> set[str]:
        return self.manifest.capabilities

    def start(self, attempts: int = 3) -> None:
        last: Exception | None = None
        for _ in range(attempts):  # a free port can be taken between probe and bind
            try:
                self._start_once()
                return
            except TargetStartError as exc:
                last = exc
                if "in use" not in str(exc) and "EADDRINUSE" not in str(exc):
                    raise
        raise TargetStartError(str(last))

    def _start_once(self) -> None:
        self.port, self.admin_port = free_port(), free_port()
        values = {
            **self.profile,
            "open_files": self.profile["open_files"] or own_open_files_limit(),
            "python": sys.executable,
            "manifest_dir": str(self.manifest.path.parent),
            "port": self.port,
            "admin_port": self.admin_port,
            "admin_token": self.admin_token,
            "redis_url": self.redis_url,
            "ports_file": str(self.ports_file),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ports_file.write_text("# ports file of this target (written by the scenarios)\n")
        command, ready_url = self.manifest.render(values)
        command = under_open_files_limit(command, self.profile["open_files"])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.manifest.env}
        try:
            self.proc = subprocess.Popen(
                command,
                cwd=self.manifest.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise TargetStartError(f"cannot start {command[0]!r}: {exc}") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.manifest.ready_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise TargetStartError(
                    f"target {self.manifest.name!r} exited with {code} before it was ready; log tail:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            try:  # between probes, wait on the target's exit (bounded): a crash is seen at once
                self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        self.stop()
        raise TargetStartError(
            f"target {self.manifest.name!r} not ready after {self.manifest.ready_timeout}s; log tail:\n"
            + self.log_tail()
        )

    @property
    def pid(self) -> int | None:
        """The started process (the one a manifest's signals go to)."""
        return self.proc.pid if self.proc is not None else None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the started process (capability ``reload_signals``)."""
        if self.proc is None:
            raise RuntimeError("the target is not running")
        self.proc.send_signal(signum)

    def stop(self) -> StopReport:
        if self.proc is None:
            return self.stop_report or StopReport(None, False)
        proc, self.proc = self.proc, None
        pgid = proc.pid
        started = time.monotonic()
        forced = False
        try:
            proc.send_signal(getattr(signal, self.manifest.stop_signal))
        except ProcessLookupError:
            pass
        try:
            code: int | None = proc.wait(timeout=self.manifest.stop_timeout)
        except subprocess.TimeoutExpired:
            forced = True
            self._kill_group(pgid)
            code = proc.wait(timeout=10)
        leftover = self._group_members(pgid)
        if leftover:
            self._kill_group(pgid)
            _wait_gone(leftover, timeout=5)
        self.stop_report = StopReport(code, forced, leftover, time.monotonic() - started)
        return self.stop_report

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _group_members(pgid: int) -> list[int]:
        members = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
        return members

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_lines()[-n:])


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until every pid has exited (pidfds become readable on exit), with a bound."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:
            pass  # already gone
    try:
        deadline = time.monotonic() + timeout
        pending = list(fds)
        while pending and time.monotonic() < deadline:
            ready, _, _ = select.select(pending, [], [], deadline - time.monotonic())
            pending = [fd for fd in pending if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
