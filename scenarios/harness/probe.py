"""The honesty probe (contract section 11): declared capabilities against behaviour.

A target could pass the suite by declaring nothing: every scenario would be
``unsupported``. The probe closes that door from both sides, for each
capability:

* **declared**: its operations and routes answer as the contract says (a
  harmless request, a bad argument or an unknown process, gets that
  capability's own error, never ``UNSUPPORTED``);
* **not declared**: its operations are refused with ``UNSUPPORTED`` (4501)
  and its routes with 404 or 501, so a target that implements something
  cannot hide it from the scenarios that test it.

The core (``core``) is owed by every target whatever it declares: the
operations of section 3.1 without a capability, the error replies of
section 3, and the admin routes the scenarios read.

Each probe is a pure description (:class:`OpProbe`, :class:`RouteProbe`); the
scenario ``contract_probe`` runs them and records every answer as evidence.
Probes are chosen to change nothing: unknown processes, bad arguments, and
read-only routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codes import BAD_REQUEST, SESSION_NOT_EXIST, UNSUPPORTED

#: No session, process or timer ever has this id (ids are positive and far below it).
NO_SUCH_ID = 2**52 + 7


@dataclass(frozen=True)
class OpProbe:
    """An app op sent on a fresh session, and what a target that declares it answers."""

    op: str
    fields: dict[str, Any] = field(default_factory=dict)
    #: ``"ok"`` for a success, else the error code expected (the capability's own).
    expect: str | int = "ok"
    #: A result field an ``ok`` reply must carry.
    carries: str = ""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"op {self.op}({args})"


@dataclass(frozen=True)
class RouteProbe:
    """An admin request, and the status (and error code) a target that declares it answers."""

    method: str
    path: str  # may hold {session}: the probing client's session id
    body: Any = None
    status: int = 200
    code: int | None = None  # the error code of a non-200 answer
    carries: str = ""  # a key a 200 answer must carry
    text: bool = False  # a 200 answer is text (the Prometheus format), not JSON

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class CapabilityProbe:
    capability: str
    ops: tuple[OpProbe, ...] = ()
    routes: tuple[RouteProbe, ...] = ()

    @property
    def checks_undeclared(self) -> bool:
        """Whether an undeclared capability can be told apart (it has ops or routes of its own)."""
        return bool(self.ops or self.routes)


PROBES: dict[str, CapabilityProbe] = {
    p.capability: p
    for p in (
        CapabilityProbe(
            "task_sweep",
            routes=(
                RouteProbe("GET", "/v1/sweep", carries="reports"),
                RouteProbe("PUT", "/v1/sweep", {"uids": "not a list"}, 400, BAD_REQUEST),
                RouteProbe("DELETE", "/v1/sweep"),
            ),
        ),
        CapabilityProbe(
            "migrate",
            ops=(
                OpProbe("migrate", {"worker": NO_SUCH_ID}, expect=2003),
                OpProbe("join", {"group": 0}),
                OpProbe("block", {"ms": 0}, carries="blocked_ms"),
            ),
            routes=(
                RouteProbe("POST", "/v1/sessions/{session}/migrate", {"worker": NO_SUCH_ID}, 404, 2003),
                RouteProbe("POST", "/v1/migrations", {"moves": "not a list"}, 400, BAD_REQUEST),
                RouteProbe("POST", "/v1/affinity", {"group": "not a group"}, 400, BAD_REQUEST),
                RouteProbe("POST", "/v1/rebalance", carries="planned"),
            ),
        ),
        CapabilityProbe(
            "reload",
            ops=(OpProbe("reload", {"scope": "no-such-scope"}, expect=BAD_REQUEST),),
            routes=(
                RouteProbe("GET", "/v1/reloads", carries="history"),
                RouteProbe("POST", "/v1/reload", {"scope": "no-such-scope"}, 400, BAD_REQUEST),
            ),
        ),
        CapabilityProbe(
            "dynamic_ports",
            ops=(
                OpProbe("listeners", carries="listeners"),
                OpProbe("listen", {"port": "no-such-port"}, expect=BAD_REQUEST),
                OpProbe("unlisten", {"port": "no-such-port"}, expect=BAD_REQUEST),
            ),
            routes=(
                RouteProbe("GET", "/v1/listeners", carries="listeners"),
                RouteProbe("POST", "/v1/listeners", {"port": "no-such-port"}, 400, BAD_REQUEST),
                RouteProbe("DELETE", "/v1/listeners/no-such-port", None, 400, BAD_REQUEST),
            ),
        ),
        CapabilityProbe(
            "ports_file",
            routes=(
                RouteProbe("GET", "/v1/ports-file", carries="path"),
                RouteProbe("POST", "/v1/ports-file/apply", carries="path"),
            ),
        ),
        CapabilityProbe(
            "redis_broadcast",
            ops=(
                OpProbe("channels", carries="channels"),
                OpProbe("subscribe", {"channel": ""}, expect=5002),
                OpProbe("unsubscribe", {"channel": "@all"}, expect=5002),
                OpProbe("publish", {"channel": "no such channel!", "data": 1}, expect=5002),
            ),
        ),
        # Capabilities without ops or routes of their own: only the declared side is probed.
        CapabilityProbe("dead_session_stats"),
        CapabilityProbe("fd_reuse_info"),
    )
}

CORE_OPS = (
    OpProbe("whoami", carries="session"),
    OpProbe("echo", {"seq": 1, "data": "probe"}, carries="data"),
    OpProbe("ping"),
    OpProbe("bind", {"uid": 0}),
    OpProbe("protect", {"on": False}),
    OpProbe("timer_status", {"timer": NO_SUCH_ID}, expect=BAD_REQUEST),
    OpProbe("push", {"to": NO_SUCH_ID, "data": "probe"}, expect=SESSION_NOT_EXIST),
    OpProbe("no_such_op_for_the_probe", expect=UNSUPPORTED),
)
CORE_ROUTES = (
    RouteProbe("GET", "/ready", carries="ready"),
    RouteProbe("GET", "/metrics", text=True),
    RouteProbe("GET", "/v1/sessions", carries="sessions"),
    RouteProbe("GET", "/v1/sessions/{session}", carries="session"),
    RouteProbe("GET", f"/v1/sessions/{NO_SUCH_ID}", status=404, code=SESSION_NOT_EXIST),
    RouteProbe("POST", f"/v1/sessions/{NO_SUCH_ID}/push", {"data": "probe"}, 404, SESSION_NOT_EXIST),
    RouteProbe("POST", f"/v1/sessions/{NO_SUCH_ID}/close", {"code": 4000}, 404, SESSION_NOT_EXIST),
    RouteProbe("POST", "/v1/sessions/{session}/push", {"no_data": 1}, 400, BAD_REQUEST),
    RouteProbe("GET", "/v1/stats", carries="counters"),
    RouteProbe("GET", "/v1/processes", carries="processes"),
    RouteProbe("GET", "/v1/no-such-route-for-the-probe", status=404, code=4404),
    RouteProbe("DELETE", "/v1/stats", status=405, code=4405),
)


@dataclass(frozen=True)
class HttpProbe:
    """A raw HTTP request to the admin port (what a client library would not send), and its answer."""

    what: str
    line: str  # the request line; {session} is the probing client's session id
    headers: tuple[str, ...] = ()
    body: str = ""
    token: bool = True  # send the admin token
    status: int = 400
    code: int = BAD_REQUEST

    def request(self, token: str, session: Any) -> bytes:
        lines = [self.line.format(session=session), "Host: 127.0.0.1", "Connection: close", *self.headers]
        if self.token:
            lines.append(f"Authorization: Bearer {token}")
        return ("\r\n".join(lines) + "\r\n\r\n" + self.body).encode()


#: The admin API's own errors (contract 4 and 3.2): each is answered with its status and code.
HTTP_PROBES = (
    HttpProbe("a body that is not JSON", "POST /v1/sessions/{session}/push HTTP/1.1", ("Content-Length: 9",), "not json!"),
    HttpProbe("no token", "GET /v1/stats HTTP/1.1", token=False, status=401, code=4401),
    HttpProbe("a POST without Content-Length", "POST /v1/sessions/{session}/push HTTP/1.1", status=411, code=4411),
    HttpProbe(
        "a body over 1 MiB", "POST /v1/sessions/{session}/push HTTP/1.1", ("Content-Length: 1048577",), status=413, code=4413
    ),
)


#: What the probe checks, in report order: the core, then each capability.
PROBED = ["core", *PROBES]


def judge_op(probe: OpProbe, reply: dict[str, Any], *, declared: bool) -> tuple[bool, str]:
    """Whether ``reply`` is what the contract allows for ``probe``, and what was expected."""
    error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
    code = error.get("code") if error else None
    if not declared:
        return (reply.get("ok") is False and code == UNSUPPORTED), f"ok: false, code {UNSUPPORTED} UNSUPPORTED"
    if probe.expect == "ok":
        good = reply.get("ok") is True and (not probe.carries or probe.carries in reply)
        return good, "ok: true" + (f" with {probe.carries!r}" if probe.carries else "")
    if probe.expect == "error":
        return (reply.get("ok") is False and code not in (None, UNSUPPORTED)), "ok: false with a code other than 4501"
    return (reply.get("ok") is False and code == probe.expect), f"ok: false, code {probe.expect}"


def judge_route(probe: RouteProbe, status: int, body: Any, *, declared: bool) -> tuple[bool, str]:
    """Whether an admin answer is what the contract allows for ``probe``, and what was expected."""
    if not declared:
        return status in (404, 501), "404 (no such route) or 501 (UNSUPPORTED)"
    if status != probe.status:
        return False, f"status {probe.status}"
    if probe.status == 200 and probe.text:
        return isinstance(body, str) and bool(body.strip()), "200 with a text body"
    if probe.status == 200:
        good = isinstance(body, dict) and (not probe.carries or probe.carries in body)
        return good, "200" + (f" with {probe.carries!r}" if probe.carries else "")
    code = body.get("error", {}).get("code") if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
    return code == probe.code, f"status {probe.status}, code {probe.code}"
