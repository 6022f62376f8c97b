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
