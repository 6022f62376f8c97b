"""A target whose answers have the shapes outside implementers guessed wrong (issue 17).

It is the reference server with its answers bent after the fact, one shape
per guess the contract used to leave open:

* ``/v1/processes``: every worker is named ``worker`` (names not unique), and a
  process of a kind the contract does not list;
* ``/v1/sweep``: report fields as counts instead of lists of ids, and a report
  of a sweep still running (``ended: null``);
* ``/v1/stats``: counters as strings;
* ``POST /v1/sessions/{id}/push``: a plain-text answer;
* a 401 with code 4400 instead of 4401;
* ``timer_stop`` without ``seq``; ``timer_status``'s ``failed`` keyed by name;
* a ``task_result`` event without ``result``.

Run it as a target: ``python -m tests.malformed_target [reference options]``,
or write its manifest with :func:`write_manifest`. The harness must judge each
shape as the named failed check :data:`scenarios.harness.conformance.CHECK_NAME`,
never crash on it (``tests/test_malformed_target.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.manifests import derived_manifest

#: (where the violation is reported, starting with; JSON pointer) for each shape above.
EXPECTED = [
    ("GET /v1/processes -> 200", "/processes"),  # names not unique
    ("GET /v1/processes -> 200", "/processes/{i}/kind"),
    ("GET /v1/sweep -> 200", "/reports/{i}/seen"),
    ("GET /v1/sweep -> 200", "/reports/{i}/ended"),
    ("GET /v1/stats -> 200", "/counters/{name}"),
    ("POST /v1/sessions/{id}/push -> 200", "/"),
    ("GET /v1/stats -> 401", "/error/code"),
    ("reply to op timer_stop", "/"),
    ("reply to op timer_status", "/failed"),
    ("event task_result", "/"),
]


def apply() -> None:
    from reference_server.apps import contract
    from reference_server.errors import ErrorCode
    from reference_server.roles import admin

    api = admin.AdminApi

    processes = api.processes

    async def bad_processes(self: Any, body: Any) -> tuple[int, Any]:
        status, doc = await processes(self, body)
        for entry in doc["processes"]:
            if entry["kind"] == "worker":
                entry["name"] = "worker"
        doc["processes"].append({"kind": "helper", "id": 0, "pid": doc["processes"][0]["pid"], "name": "helper"})
        return status, doc

    stats = api.stats

    async def bad_stats(self: Any, body: Any) -> tuple[int, Any]:
        status, doc = await stats(self, body)
        doc["counters"] = {k: str(v) for k, v in doc["counters"].items()}
        return status, doc

    app_op = api.app_op

    def bad_app_op(self: Any, op: str) -> Any:
        handler = app_op(self, op)
        if op != "sweep.reports":
            return handler

        async def reports(body: Any) -> tuple[int, Any]:
            status, doc = await handler(body)
            doc["reports"] = [
                {k: (len(v) if isinstance(v, list) else v) for k, v in r.items()} for r in doc["reports"]
            ] + [{"sweep": 10**6, "started": 1.0, "ended": None, "seen": 0, "matched": 0, "closed": 0,
                  "info_missing": 0, "close_failed": 0, "errors": 0}]
            return status, doc

        return reports

    push = api.push

    async def bad_push(self: Any, body: Any, sid: str) -> tuple[int, Any]:
        status, _ = await push(self, body, sid)
        return status, "pushed"

    def bad_token(self: Any, headers: dict[str, str]) -> None:
        given = headers.get("authorization", "")
        if given != f"Bearer {self.token.decode()}":
            raise admin.HttpError(401, ErrorCode.BAD_REQUEST, "wrong token")

    api.processes, api.stats, api.app_op, api.push, api._check_token = (
        bad_processes, bad_stats, bad_app_op, bad_push, bad_token
    )

    app = contract.ContractApp

    def timer_stop(self: Any, server: Any, session: int, msg: dict) -> dict:
        timer = self._own_timer(session, msg)
        self._drop_timer(server, timer)
        return {k: v for k, v in timer.status().items() if k != "seq"}

    def timer_status(self: Any, server: Any, session: int, msg: dict) -> dict:
        timer = self._own_timer(session, msg)
        return {**timer.status(), "failed": {ErrorCode(c).name: n for c, n in timer.failed.items()}}

    def on_finish(self: Any, server: Any, task_id: int, data: Any) -> None:
        pending = self.pending_tasks.pop(task_id, None)
        if pending is not None:
            session, req_id = pending
            server.push(session, json.dumps({"ev": "task_result", "task": task_id, "re": req_id, "output": data}))

    app.op_timer_stop, app.op_timer_status, app.on_finish = timer_stop, timer_status, on_finish


def write_manifest(directory: Path, *, known_failure: str | None = None) -> Path:
    """The reference's manifest, started through this module.

    ``known_failure``: a case to list under ``[known_failures]``; a known failure
    must not excuse malformed answers, so the case must still fail.
    """
    extra = f'\n[known_failures]\n"{known_failure}" = "listed to show it does not excuse malformed answers"\n'
    return derived_manifest(
        directory / "malformed-answers.toml",
        module=["tests.malformed_target"],
        name="malformed-answers",
        description="BROKEN on purpose: answers of the shapes outside implementers guessed wrong",
        extra=extra if known_failure else "",
    )


if __name__ == "__main__":
    from reference_server.cli import main

    apply()
    sys.exit(main(sys.argv[1:]))
