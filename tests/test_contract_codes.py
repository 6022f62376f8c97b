"""One table of codes: the harness's, the document's, the schema's, the reference's and the targets' agree.

``scenarios/harness/codes.py`` is the table. The document's section 3.2, the
schema's ``$defs/code``, the reference's ``ErrorCode`` and ``targets/kit.py``
must say the same code for the same name; the reference may have codes of its
own only for what never reaches a client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from reference_server.errors import CloseCode, ErrorCode
from scenarios.harness import codes
from targets import kit

REPO = Path(__file__).resolve().parents[1]
#: Reference codes that never reach a client (an internal retry, a close code, success).
REFERENCE_ONLY = {"OK", "MOVED", "MESSAGE_TOO_BIG"}


def document_table() -> dict[str, int]:
    text = (REPO / "docs" / "contract-v1.md").read_text()
    section = text[text.index("### 3.2 Error codes") : text.index("### 3.3")]
    return {name: int(code) for code, name in re.findall(r"^\| (\d{4}) \| `([A-Z_]+)` \|", section, re.M)}


def test_the_document_lists_exactly_the_harness_table() -> None:
    assert document_table() == codes.ERRORS


def test_the_schema_allows_exactly_the_table_codes() -> None:
    schema = json.loads((REPO / "docs" / "contract" / "app.schema.json").read_text())
    assert sorted(schema["$defs"]["code"]["enum"]) == sorted(codes.ERRORS.values())


def test_the_reference_uses_the_table() -> None:
    for name, code in codes.ERRORS.items():
        assert ErrorCode[name] == code, name
    extra = {e.name for e in ErrorCode} - set(codes.ERRORS)
    assert extra == REFERENCE_ONLY, extra
    for name, code in codes.CLOSES.items():
        assert CloseCode[name] == code, name


def test_the_targets_kit_uses_the_table() -> None:
    for name, code in kit.CODES.items():
        assert codes.ERRORS.get(name) == code, name
    assert (kit.SWEPT, kit.HEARTBEAT, kit.SLOW_CONSUMER) == (
        codes.CLOSES["SWEPT"], codes.CLOSES["IDLE_TIMEOUT"], codes.CLOSES["SLOW_CONSUMER"]
    )


def test_http_errors_carry_their_codes_in_the_openapi_document() -> None:
    api = json.loads((REPO / "docs" / "contract" / "admin.openapi.json").read_text())
    for status, code in codes.HTTP_ERRORS.items():
        name = codes.NAMES[code]
        described = [r["description"] for r in api["components"]["responses"].values() if r["description"].startswith(str(status))]
        assert described and all(f"{code} {name}" in d for d in described), (status, described)


def test_the_schemas_are_valid_json_schema_and_openapi() -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    folder = REPO / "docs" / "contract"
    Draft202012Validator.check_schema(json.loads((folder / "app.schema.json").read_text()))
    spec = json.loads((folder / "admin.openapi.json").read_text())
    validate(spec, base_uri=(folder / "admin.openapi.json").resolve().as_uri())
