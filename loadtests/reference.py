"""The reference server as the benchmarks start it: from its manifest, through the harness's Target.

The same path as the scenarios (``reference_server/target.toml``): the command the manifest
names, readiness by ``GET /ready``, stop by the manifest's signal with a bound, no process
left behind. A benchmark asks for a profile (workers, task workers, ...), gets the WebSocket
port and an admin client, and stops it in a ``finally``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scenarios.harness.admin import AdminClient
from scenarios.harness.manifest import load_manifest
from scenarios.harness.target import Target

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "reference_server" / "target.toml"
#: Where the benchmarks' server logs go (reports/ is what runs write; it is not committed).
LOG_DIR = REPO / "reports" / "bench"


class ReferenceServer:
    """One reference server for a benchmark; :meth:`start` returns once it is ready."""

    def __init__(self, profile: dict[str, Any], *, label: str, redis_url: str = "", log_dir: Path = LOG_DIR) -> None:
        """``label`` names the log (``<log_dir>/<label>.log``); an empty ``redis_url``: the embedded broker."""
        profile = {"log_level": "warning", **profile}
        self.target = Target(load_manifest(MANIFEST), profile=profile, redis_url=redis_url, log_path=log_dir / f"{label}.log")
        self.admin: AdminClient | None = None

    def start(self) -> ReferenceServer:
        self.target.start()  # returns once GET /ready answers 200, as in the scenarios
        self.admin = AdminClient(self.target.admin_url, self.target.admin_token)
        return self

    @property
    def port(self) -> int:
        return self.target.port

    @property
    def pid(self) -> int:
        assert self.target.proc is not None
        return self.target.proc.pid

    def stop(self) -> None:
        self.target.stop()
