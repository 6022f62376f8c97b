"""The server object's broadcast methods (contract section 10): ``subscribe``, ``unsubscribe``,
``channels``, ``publish``.

Membership is kept by the worker that owns the session (``session/channels.py``); a
message goes through Redis to every node's broadcaster (``roles/broadcaster.py``).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ..core.broadcast import ALL, BadChannel, BroadcastMode, check_channel, stream_id, stream_pos
from ..errors import ErrorCode, ServerError

if TYPE_CHECKING:
    from .context import ChildContext

#: Durable mode: ``publish`` trims a channel's stream to about this many entries (history is what is left).
STREAM_MAXLEN = 100_000


class Broadcasting:
    """Mixed into ``api.Server``."""

    _rt: ChildContext

    def _own_session(self, session: int):  # -> Session
        sess = self._rt.sessions.get(session)
        if sess is None or not sess.is_open:
            info = self._rt.table.lookup(session)
            if info is None:
                raise ServerError(ErrorCode.SESSION_NOT_EXIST, f"session {session} does not exist")
            if sess is None and info.owner_pid != os.getpid():
                raise ServerError(
                    ErrorCode.UNSUPPORTED, f"session {session} belongs to {info.owner_pid}: join from its owner"
                )
            if not info.established:
                raise ServerError(ErrorCode.NOT_ESTABLISHED, f"session {session} is still in its handshake")
            raise ServerError(ErrorCode.SESSION_CLOSED, f"session {session} is closing")
        return sess

    async def subscribe(self, session: int, channel: str, *, since: str | None = None) -> dict[str, Any]:
        """Put ``session`` (owned by this worker) in ``channel``.

        The answer comes once the session is a member, so a message published
        after it reaches the session. ``since`` (durable mode): a stream id; the
        messages after it are sent first, then live ones, with no gap and no
        repeat. Returns ``{"history": n, "complete": bool, "id": last id or None}``.
        Raises :class:`ServerError` (``BAD_CHANNEL``, ``HISTORY_UNAVAILABLE``, ...).
        """
        rt = self._rt
        try:
            check_channel(channel)
        except BadChannel as exc:
            raise ServerError(ErrorCode.BAD_CHANNEL, str(exc)) from None
        pos: int | None = None
        if since is not None:
            if rt.config.broadcast_mode != BroadcastMode.DURABLE:
                raise ServerError(ErrorCode.HISTORY_UNAVAILABLE, "history needs --broadcast-mode durable")
            try:
                pos = stream_pos(since)
            except ValueError as exc:
                raise ServerError(ErrorCode.BAD_REQUEST, f"since: {exc}") from None
        result = await rt.channels.join(self._own_session(session), channel, pos)
        durable = rt.config.broadcast_mode == BroadcastMode.DURABLE
        return {
            "history": result["history"],
            "complete": result["complete"],
            "id": stream_id(result["pos"]) if durable else None,
        }

    async def unsubscribe(self, session: int, channel: str) -> bool:
        """Take ``session`` out of ``channel``; False if it was not in it.

        What was published before the call still reaches the session (a
        barrier with the broadcaster); nothing published after the answer does.
        """
        try:
            check_channel(channel)
        except BadChannel as exc:
            raise ServerError(ErrorCode.BAD_CHANNEL, str(exc)) from None
        return await self._rt.channels.leave(self._own_session(session), channel)

    def channels(self, session: int) -> list[str]:
        """The named channels ``session`` is in (not ``@all``)."""
        sess = self._rt.sessions.get(session)
        return sorted(c for c in (sess.channels if sess is not None else ()) if c != ALL)

    async def publish(self, channel: str, data: Any) -> str | None:
        """Publish ``data`` (any JSON value) to ``channel`` through Redis, for every node.

        Returns the stream id in durable mode, None in pub/sub mode. The
        channel ``@all`` reaches every established session. Raises
        :class:`ServerError` (``BAD_CHANNEL``, ``BROKER_UNAVAILABLE``, ``BROADCAST_OFF``).
        """
        rt = self._rt
        cfg = rt.config
        if cfg.broadcast_mode == "off" or not rt.boot.broker_url:
            raise ServerError(ErrorCode.BROADCAST_OFF, "broadcast is off on this server")
        try:
            check_channel(channel, joinable=False)
        except BadChannel as exc:
            raise ServerError(ErrorCode.BAD_CHANNEL, str(exc)) from None
        payload = json.dumps(data, separators=(",", ":"))
        key = cfg.broadcast_prefix + channel
        try:
            client = rt.redis()
            if cfg.broadcast_mode == BroadcastMode.DURABLE:
                entry_id = await client.xadd(key, {"data": payload}, maxlen=STREAM_MAXLEN, approximate=True)
                return entry_id.decode("ascii") if isinstance(entry_id, bytes) else str(entry_id)
            await client.publish(key, payload)
            return None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise ServerError(ErrorCode.BROKER_UNAVAILABLE, f"Redis: {exc}") from None
        except Exception as exc:
            import redis.exceptions

            if isinstance(exc, redis.exceptions.RedisError):
                raise ServerError(ErrorCode.BROKER_UNAVAILABLE, f"Redis: {exc}") from None
            raise
