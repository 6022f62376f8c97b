"""Test applications for the reference server."""

from __future__ import annotations

import asyncio
import json

from reference_server.app import ProcessSpec
from reference_server.apps.contract import ContractApp


async def greeter(server) -> None:
    """A custom process: greet every established session, once, from outside the workers."""
    greeted: set[int] = set()
    while True:
        for sid in server.connections:
            if sid not in greeted and server.is_established(sid):
                if server.push(sid, json.dumps({"ev": "greeting", "to": sid, "from": server.name})):
                    greeted.add(sid)
        await asyncio.sleep(0.02)  # the process's own polling period


class GreeterApp(ContractApp):
    processes = [ProcessSpec("greeter", greeter)]


greeter_app = GreeterApp()


async def pulse(server) -> None:
    """A custom process declared reloadable: it only waits to be stopped."""
    await asyncio.Event().wait()


class LeakyApp(ContractApp):
    """The contract app, but each worker starts a heartbeat timer its exit hook forgets.

    Also runs two custom processes: ``greeter`` (not reloadable, the default)
    and ``pulse`` (reloadable).
    """

    processes = [ProcessSpec("greeter", greeter), ProcessSpec("pulse", pulse, reloadable=True)]

    def on_worker_start(self, server) -> None:
        super().on_worker_start(server)
        if server.kind == "worker":
            server.tick(500, lambda tid: None, label="forgotten heartbeat")

    def on_worker_exit(self, server) -> None:
        self.exiting = True
        for mine in self.by_owner.values():
            self._disarm(server, mine)  # the sessions' timers, but not the heartbeat


leaky_app = LeakyApp()


async def porter(server) -> None:
    """A custom process that opens an echo port of its own, and says which in the log."""
    listener = await server.listen(0, handler="echo")
    server.log.info("porter.listening", port=listener["port"])
    await asyncio.Event().wait()


class PortsApp(ContractApp):
    """The contract app; a custom process listens, and a task ``"listen"`` listens from the task worker."""

    processes = [ProcessSpec("porter", porter)]

    async def on_task(self, server, task_id, src_worker, data):
        if data.get("data") == "listen":
            return await server.listen(0, on_remove="close")
        return await super().on_task(server, task_id, src_worker, data)


ports_app = PortsApp()
