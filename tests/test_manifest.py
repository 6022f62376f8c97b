"""The manifest parser: ``[known_failures]`` entries as reasons or as ``{reason, checks}`` (1.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.harness.manifest import ManifestError, load_manifest

BASE = """contract = "1.1"
name = "t"
[start]
command = ["true"]
[ready]
http = "http://127.0.0.1:{admin_port}/ready"
"""


def _load(tmp_path: Path, known: str):
    path = tmp_path / "m.toml"
    path.write_text(BASE + known)
    return load_manifest(path)


def test_a_reason_or_a_table_of_reason_and_checks(tmp_path: Path) -> None:
    m = _load(tmp_path, '[known_failures]\n"heartbeat" = "no close frame"\n'
              '[known_failures.closing_session]\nreason = "drops at once"\nchecks = ["a", "b"]\n')
    assert m.known_failures == {"heartbeat": "no close frame", "closing_session": "drops at once"}
    assert m.known_failure_checks == {"closing_session": ("a", "b")}
    assert m.known_failure_intermittent == set()


def test_an_entry_may_be_intermittent(tmp_path: Path) -> None:
    m = _load(tmp_path, '[known_failures.x]\nreason = "a race"\nchecks = ["a"]\nintermittent = true\n')
    assert m.known_failure_intermittent == {"x"}


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ('"x" = 3', "must be a reason"),
        ('"x" = { checks = ["a"] }', "reason must be a non-empty string"),
        ('"x" = { reason = "r" }', "checks must be a non-empty list"),
        ('"x" = { reason = "r", checks = [] }', "checks must be a non-empty list"),
        ('"x" = { reason = "r", checks = [1] }', "checks must be a non-empty list"),
        ('"x" = { reason = "r", checks = ["a"], check = "typo" }', "unknown keys ['check']"),
        ('"x" = { reason = "r", checks = ["a"], intermittent = "yes" }', "intermittent must be true or false"),
    ],
)
def test_a_malformed_entry_is_refused_by_name(tmp_path: Path, entry: str, named: str) -> None:
    with pytest.raises(ManifestError, match="known_failures") as info:
        _load(tmp_path, f"[known_failures]\n{entry}\n")
    assert named in str(info.value)


def test_a_number_of_the_wrong_type_is_a_manifest_error_naming_both_types(tmp_path: Path) -> None:
    """A field that takes an int or a float (ports.grace_ms, ready.timeout_s): a string is refused clearly."""
    path = tmp_path / "m.toml"
    path.write_text(BASE + '[ports]\ngrace_ms = "soon"\n')
    with pytest.raises(ManifestError, match=r"ports\.grace_ms must be int or float, got str"):
        load_manifest(path)
