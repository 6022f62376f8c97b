"""Every target answer the harness relies on, checked against the contract's schemas.

The contract's messages are data, next to the readable document:
``docs/contract/app.schema.json`` (JSON Schema 2020-12: every request, reply
and event of the application protocol) and ``docs/contract/admin.openapi.json``
(OpenAPI 3.1: every admin route, body, answer and error status). This module
loads them once and judges answers with ``jsonschema`` (no hand-written shape
checks), plus the few rules a schema cannot say (process names are unique, an
HTTP error status carries its own code, a sweep ends after it starts).

A scenario never sees a traceback for a malformed answer: the clients and the
admin client hand every answer to :func:`observe_reply`, :func:`observe_event`
or :func:`observe_admin`, which record what is wrong in the current case's
:class:`ConformanceLog`; the plugin turns that log into the named check
:data:`CHECK_NAME` of every scenario, whose observed value names the op or
route, the JSON pointer and the problem.

Cost: the admin answers are all validated (they are few); replies and events
are validated for the first :data:`FULL_SAMPLE` of each kind in a case and then
one in :data:`STRIDE`, so a scenario receiving 100,000 ticks pays for about
1,300 validations, not 100,000.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from .codes import HTTP_ERRORS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "contract"

CHECK_NAME = "the target's answers match the contract (docs/contract/*.json)"
FULL_SAMPLE = 300
STRIDE = 100
MAX_KEPT = 40  # distinct violations kept per case (all are counted)


@dataclass(frozen=True)
class Violation:
    """One answer that is not what the contract says: where, at which JSON pointer, and what."""

    where: str  # "reply to op whoami", "event tick", "GET /v1/stats -> 200"
    pointer: str  # JSON pointer into the answer ("" for the whole answer)
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "pointer": self.pointer or "/", "problem": self.problem}

    def __str__(self) -> str:
        return f"{self.where} at {self.pointer or '/'}: {self.problem}"


def _pointer(path: Any) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Contract:
    """The schemas of one contract version, compiled once."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.app = json.loads((directory / "app.schema.json").read_text())
        self.openapi = json.loads((directory / "admin.openapi.json").read_text())
        app_uri = (directory / "app.schema.json").resolve().as_uri()
        self.admin_uri = (directory / "admin.openapi.json").resolve().as_uri()
        app_resource = DRAFT202012.create_resource(self.app)
        self.registry: Registry = Registry().with_resources(
            [
                (self.app["$id"], app_resource),
                (app_uri, app_resource),
                (self.admin_uri, DRAFT202012.create_resource(self.openapi)),
            ]
        )
        self._validators: dict[str, Draft202012Validator] = {}
        self.ops = set(self.app["$defs"]["reply"]["$defs"])
        self.events = set(self.app["$defs"]["event"]["$defs"])
        self.routes = [(template, _template_regex(template)) for template in self.openapi["paths"]]

    # -- validators ------------------------------------------------------------------------

    def _validator(self, ref: str) -> Draft202012Validator:
        validator = self._validators.get(ref)
        if validator is None:
            validator = Draft202012Validator({"$ref": ref}, registry=self.registry)
            self._validators[ref] = validator
        return validator

    def _problems(self, ref: str, value: Any, where: str) -> list[Violation]:
        out = []
        for error in self._validator(ref).iter_errors(value):
            # The deepest errors of a oneOf/anyOf/allOf say most; report those.
            leaves = _leaves(error)
            for leaf in leaves:
                out.append(Violation(where, _pointer(leaf.absolute_path), _describe(leaf)))
        return out

    # -- the application protocol ----------------------------------------------------------

    def reply_problems(self, op: str | None, reply: Any) -> list[Violation]:
        """Problems of a reply to ``op`` (None: the op is not known, only the envelope is checked)."""
        where = f"reply to op {op}" if op else "reply"
        app = self.app["$id"]
        if isinstance(reply, dict) and reply.get("ok") is False:
            return self._problems(f"{app}#/$defs/error_reply", reply, where)
        if op in self.ops:
            return self._problems(f"{app}#/$defs/reply/$defs/{op}", reply, where)
        return self._problems(f"{app}#/$defs/ok_reply", reply, where)

    def event_problems(self, event: Any) -> list[Violation]:
        app = self.app["$id"]
        name = event.get("ev") if isinstance(event, dict) else None
        if isinstance(name, str) and name in self.events:
            return self._problems(f"{app}#/$defs/event/$defs/{name}", event, f"event {name}")
        return self._problems(f"{app}#/$defs/event", event, f"event {name}")

    def component_problems(self, name: str, value: Any) -> list[Violation]:
        """Problems of ``value`` as the admin document's schema ``name`` (e.g. ``SessionRecord``)."""
        return self._problems(f"{self.admin_uri}#/components/schemas/{name}", value, name)

    # -- the admin API -----------------------------------------------------------------------

    def match_route(self, path: str) -> str | None:
        """The contract's path template for a concrete path (query string ignored)."""
        path = path.split("?", 1)[0]
        for template, regex in self.routes:
            if regex.fullmatch(path):
                return template
        return None

    def admin_problems(self, method: str, path: str, status: int, body: Any, *, is_json: bool) -> list[Violation]:
        """Problems of an admin answer: its status is one the route has, and its body has the shape."""
        template = self.match_route(path)
        where = f"{method} {template or path.split('?', 1)[0]} -> {status}"
        if template is None:
            # Not a route of the contract (the probe asks for some): only an error answer is possible.
            if status < 400:
                return [Violation(where, "", "the contract has no such route, but the answer is not an error")]
            return self._admin_body(f"{self.admin_uri}#/components/schemas/Error", body, is_json, where, status)
        operation = self.openapi["paths"][template].get(method.lower())
        if operation is None:
            if status in (404, 405):
                return self._admin_body(f"{self.admin_uri}#/components/schemas/Error", body, is_json, where, status)
            return [Violation(where, "", f"{method} is not a method of {template}: expected 405 (or 404)")]
        responses = operation["responses"]
        key = str(status)
        if key not in responses:
            listed = ", ".join(sorted(responses))
            return [Violation(where, "", f"status {status} is not an answer of {method} {template} (the contract lists {listed})")]
        response = responses[key]
        if "$ref" in response:  # a shared response of components/responses
            ref, response = self.admin_uri + response["$ref"], self._resolve_response(response)
        else:
            ref = f"{self.admin_uri}#/paths/{_escape(template)}/{method.lower()}/responses/{key}"
        if "application/json" in response.get("content", {}):
            return self._admin_body(f"{ref}/content/application~1json/schema", body, is_json, where, status)
        return []

    def _resolve_response(self, response: dict[str, Any]) -> dict[str, Any]:
        name = response["$ref"].rsplit("/", 1)[-1]
        return self.openapi["components"]["responses"][name]

    def _admin_body(self, ref: str, body: Any, is_json: bool, where: str, status: int) -> list[Violation]:
        if not is_json:
            return [Violation(where, "", f"the body is not JSON: {_short(body)}")]
        problems = self._problems(ref, body, where)
        if not problems and status in HTTP_ERRORS:
            code = body["error"]["code"]
            if code != HTTP_ERRORS[status]:
                problems.append(
                    Violation(where, "/error/code", f"status {status} carries code {HTTP_ERRORS[status]}, not {code}")
                )
        try:
            problems += _semantic(where, body)
        except (KeyError, TypeError, IndexError, AttributeError):  # a shape problem, reported above
            pass
        return problems


def _semantic(where: str, body: Any) -> list[Violation]:
    """Rules a schema cannot state (run on answers whose shape is already right)."""
    out: list[Violation] = []
    if where.startswith("GET /v1/processes -> 200"):
        names = [p.get("name") for p in body["processes"] if isinstance(p, dict)]
        dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        if dupes:
            out.append(Violation(where, "/processes", f"process names are not unique: {dupes}"))
        masters = sum(1 for p in body["processes"] if isinstance(p, dict) and p.get("kind") == "master")
        if masters > 1:  # a single-process target has none: it lists itself as worker 0
            out.append(Violation(where, "/processes", f"{masters} processes of kind 'master' (at most one)"))
    if where.startswith("GET /v1/sweep -> 200"):
        for i, report in enumerate(body["reports"]):
            ended, started = report.get("ended"), report.get("started")
            if isinstance(ended, (int, float)) and isinstance(started, (int, float)) and ended < started:
                out.append(Violation(where, f"/reports/{i}/ended", "a sweep ends before it starts"))
    return out


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def _escape(template: str) -> str:
    return template.replace("~", "~0").replace("/", "~1")


def _leaves(error: Any) -> list[Any]:
    if not error.context:
        return [error]
    # For anyOf/oneOf, report the branch that got furthest (the deepest error path).
    best = max(error.context, key=lambda e: (len(e.absolute_path), -len(list(e.context or []))))
    return _leaves(best)


def _describe(error: Any) -> str:
    if error.validator == "required":
        return error.message.replace(" is a required property", " is missing")
    if error.validator in ("type", "const", "enum", "minimum", "maximum", "pattern"):
        return f"{_short(error.instance)} is not allowed here: {error.validator} {_short(error.validator_value, 80)}"
    return error.message[:300]


@cache
def contract() -> Contract:
    return Contract()


# -- the current case's log --------------------------------------------------------------------


class ConformanceLog:
    """One case's answers: how many were validated, and what was wrong (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.validated = 0
        self.seen: dict[str, int] = {}
        #: One example per place (where, pointer with array indices as ``*``), and how often it was seen.
        self.violations: dict[tuple[str, str], tuple[Violation, int]] = {}
        self.violation_count = 0

    def due(self, kind: str) -> bool:
        """Whether this answer of ``kind`` is one to validate (all the first ones, then a sample)."""
        with self._lock:
            n = self.seen.get(kind, 0)
            self.seen[kind] = n + 1
        return n < FULL_SAMPLE or n % STRIDE == 0

    def add(self, problems: list[Violation]) -> None:
        with self._lock:
            self.validated += 1
            self.violation_count += len(problems)
            for problem in problems:
                key = (problem.where, re.sub(r"/\d+(?=/|$)", "/*", problem.pointer))
                if key in self.violations:
                    example, n = self.violations[key]
                    self.violations[key] = (example, n + 1)
                elif len(self.violations) < MAX_KEPT:
                    self.violations[key] = (problem, 1)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "validated": self.validated,
                "violations": self.violation_count,
                "first": [{**v.as_dict(), "times": n} for v, n in self.violations.values()],
            }


_current = ConformanceLog()


def begin_case() -> ConformanceLog:
    """A fresh log for the case that starts now (the plugin calls this before each scenario)."""
    global _current
    _current = ConformanceLog()
    return _current


def current() -> ConformanceLog:
    return _current


def observe_reply(op: str | None, reply: Any) -> None:
    log = _current
    if log.due(f"op:{op}"):
        log.add(_guarded(lambda: contract().reply_problems(op, reply), f"reply to op {op}"))


def observe_event(event: Any) -> None:
    log = _current
    name = event.get("ev") if isinstance(event, dict) else None
    if log.due(f"ev:{name}"):
        log.add(_guarded(lambda: contract().event_problems(event), f"event {name}"))


def observe_admin(method: str, path: str, status: int, body: Any, *, is_json: bool) -> None:
    log = _current
    log.add(_guarded(lambda: contract().admin_problems(method, path, status, body, is_json=is_json), f"{method} {path}"))


def _guarded(judge: Any, where: str) -> list[Violation]:
    """A validation that fails in itself (a bug of ours) is reported, never raised into a scenario."""
    try:
        return judge()
    except Exception as exc:  # pragma: no cover - a defect of the schemas or of this module
        return [Violation(where, "", f"the harness could not validate this answer: {exc!r}")]


def check(evidence: Any, log: ConformanceLog | None = None) -> bool:
    """Add the named check :data:`CHECK_NAME` to ``evidence`` (once) from ``log``."""
    if any(c.name == CHECK_NAME for c in evidence.checks):
        return all(c.passed for c in evidence.checks if c.name == CHECK_NAME)
    summary = (log or _current).summary()
    passed = summary["violations"] == 0 and summary["validated"] > 0
    return evidence.check(
        CHECK_NAME,
        passed,
        expected="every answer validated has the contract's shape (and at least one was validated)",
        observed=summary["first"] or f"{summary['validated']} answers validated, none malformed",
        validated=summary["validated"],
        violations=summary["violations"],
    )
