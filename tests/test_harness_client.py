"""The harness's scenario client: aborting a connection the server has just closed is harmless.

A scenario that aborts clients on a schedule (``task_sweep``'s churn) races
the target closing the same clients: the abort must then be a no-op, never an
error in the harness that fails the scenario.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, serve

from scenarios.harness.client import ScenarioClient


async def close_at_once(conn: ServerConnection) -> None:
    await conn.close(4001, "swept")


def test_abort_after_the_server_closed_the_connection_is_a_no_op() -> None:
    async def scenario() -> tuple[int, str] | None:
        async with serve(close_at_once, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            client = await ScenarioClient.connect(f"ws://127.0.0.1:{port}/", "churn0")
            await client.wait_closed()
            assert client.ws.transport.get_extra_info("socket").fileno() == -1  # the socket is gone
            client.abort()  # the churn schedule comes round after the close: no error
            assert client.aborted
            return client.close_frame

    assert asyncio.run(scenario()) == (4001, "swept")
