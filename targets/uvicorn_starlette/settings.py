"""The settings every process of the uvicorn target shares, and its Redis key names.

uvicorn starts its workers with ``multiprocessing`` (spawn): they import the
application by name and inherit the environment, not the parent's objects. So
the command line is parsed once, in the supervisor, and handed to every
process as JSON in ``UVS_SETTINGS``.

Everything that crosses processes lives in Redis under one namespace per
server instance (``uvs:<supervisor pid>:``), so two instances sharing a Redis
never see each other's sessions; only the broadcast channels (section 10 of
the contract) are shared on purpose.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ENV = "UVS_SETTINGS"


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    admin_port: int
    admin_token: str
    redis_url: str
    namespace: str
    workers: int = 3
    task_workers: int = 1
    heartbeat_idle_ms: int = 0
    heartbeat_check_ms: int = 0
    max_wait_ms: int = 3000
    broadcast_prefix: str = "bc:"
    broadcast_buffer_bytes: int = 1 << 20
    max_message_bytes: int = 1 << 20
    log_level: str = "info"

    def export(self) -> None:
        """Put the settings where spawned processes find them."""
        os.environ[ENV] = json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Settings:
        raw = os.environ.get(ENV)
        if not raw:
            raise RuntimeError(f"{ENV} is not set: start the server with python -m targets.uvicorn_starlette")
        return cls(**json.loads(raw))

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)


class Keys:
    """Redis names of one server instance."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def __getattr__(self, name: str) -> str:  # keys.owner -> "uvs:123:owner"
        if name.startswith("_"):
            raise AttributeError(name)
        return f"{self.ns}{name}"

    def bus(self, process: str) -> str:
        """The pub/sub channel a process listens to for calls and replies."""
        return f"{self.ns}bus:{process}"

    def answer(self, request: str) -> str:
        """The list a reload request's answer is pushed to."""
        return f"{self.ns}reload-answer:{request}"
