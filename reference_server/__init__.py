"""Reference multi-process WebSocket server with a Swoole-like API.

Architecture: ``docs/architecture.md``. Target contract: ``docs/contract-v1.md``.
"""

from .app import Application, ProcessSpec
from .config import Config
from .core.registry import ClientInfo, SessionState
from .errors import CloseCode, ErrorCode, ExitCode, ServerError

__all__ = [
    "Application",
    "ClientInfo",
    "CloseCode",
    "Config",
    "ErrorCode",
    "ExitCode",
    "ProcessSpec",
    "ServerError",
    "SessionState",
]
__version__ = "0.1.0"
