"""The harness's scenario client: aborting a connection the server has just closed is harmless,
and a client behind its socket does not hold the event loop.

A scenario that aborts clients on a schedule (``task_sweep``'s churn) races
the target closing the same clients: the abort must then be a no-op, never an
error in the harness that fails the scenario.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, serve

from scenarios.harness import client as client_module
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


BURST = 5000


async def burst(conn: ServerConnection) -> None:
    """Send BURST small messages at once (a client behind its socket finds them all waiting)."""
    for i in range(BURST):
        await conn.send(f'{{"ev":"tick","seq":{i}}}')
    await conn.wait_closed()


async def most_read_in_one_turn() -> tuple[int, int]:
    """(messages received, the most the client read between two turns of another task)."""
    async with serve(burst, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await ScenarioClient.connect(f"ws://127.0.0.1:{port}/", "reader")
        most, seen = 0, 0
        deadline = asyncio.get_running_loop().time() + 20
        while len(client.events) < BURST and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0)  # one turn of the loop
            most, seen = max(most, len(client.events) - seen), len(client.events)
        await client.dispose()
        return len(client.events), most


def test_a_client_with_a_backlog_lets_the_event_loop_turn(monkeypatch) -> None:
    """A client reads at most READ_TURN waiting messages per turn of the event loop: 200 clients
    behind their sockets once made one turn last tens of seconds, every timer of the harness late."""
    received, most = asyncio.run(most_read_in_one_turn())
    assert received == BURST
    assert 0 < most <= client_module.READ_TURN, most
    # The check bites: a reader that never lets go reads more than that in one turn.
    monkeypatch.setattr(client_module, "READ_TURN", 10**9)
    received, most = asyncio.run(most_read_in_one_turn())
    assert received == BURST
    assert most > 64, f"the burst never found the reader behind (most {most} per turn): the check above is vacuous"
