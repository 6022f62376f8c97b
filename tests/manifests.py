"""Manifests of broken-on-purpose targets, derived from the reference's own manifest.

A variant or the malformed target is the reference server started through
another module, so its manifest is the reference's ``target.toml`` with the
start module, the name, the description and ``cwd`` replaced: everything else
(placeholders, capabilities, broadcast and heartbeat sections) stays in step
with the reference by construction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "reference_server" / "target.toml"
_START = '"{python}", "-m", "reference_server",'


def derived_manifest(path: Path, *, module: list[str], name: str, description: str, extra: str = "") -> Path:
    """Write at ``path`` the reference's manifest started as ``python -m <module...>``."""
    text = REFERENCE.read_text()
    assert _START in text, f"{REFERENCE} no longer starts with {_START}"
    text = text.replace(_START, ", ".join(json.dumps(part) for part in ["{python}", "-m", *module]) + ",", 1)
    for key, value in (("name", name), ("description", description), ("cwd", str(REPO))):
        text, replaced = re.subn(rf"(?m)^{key} = .*$", lambda _m, k=key, v=value: f"{k} = {json.dumps(v)}", text, count=1)
        assert replaced == 1, f"{REFERENCE} has no {key} line"
    header = f"# Written by tests/manifests.py: the reference's manifest, started through {' '.join(module)}.\n"
    path.write_text(header + text + extra)
    return path
