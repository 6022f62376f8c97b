"""What the master prepares for a child before it forks it (:class:`ChildBoot`), and how
the application is found (:func:`load_app`). The child's entry point is
``child/runtime.child_main``.
"""

from __future__ import annotations

import importlib
import socket
from dataclasses import dataclass, field
from typing import Any

from ..app import Application, ProcessSpec
from ..config import Config
from ..core.countertable import CounterTable
from ..core.proctable import ProcKind, ProcTable
from ..core.registry import SessionTable
from ..logs import Log


@dataclass
class ChildBoot:
    """Everything a child needs, prepared by the master before the fork."""

    kind: ProcKind
    index: int
    name: str
    generation: int
    config: Config
    token: str
    table: SessionTable
    procs: ProcTable
    ctl: socket.socket
    log: Log
    app: Application
    master_pid: int
    spec: ProcessSpec | None = None
    extra_socket: socket.socket | None = None  # admin listener / broker listener
    broker_url: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    counters: CounterTable | None = None  # every process's counters, kept across deaths
    counter_row: int = 0  # this child's row of it


def load_app(spec: str) -> Application:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, Application):
        raise TypeError(f"{spec} is not an Application")
    return obj
