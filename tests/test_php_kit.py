"""The PHP targets' contract kit (targets/php_kit): its checks, and its codes against the table.

The checks run in PHP (tests/php/kit_checks.php); they skip where PHP is not
installed. The codes are read from the PHP source, so that comparison runs
everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scenarios.harness import codes

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "targets" / "php_kit"


def _php_array(source: str, const: str) -> dict[str, int]:
    body = source[source.index(f"const {const} = [") :]
    body = body[: body.index("];")]
    return {name: int(code) for name, code in re.findall(r"'([A-Z_]+)' => (\d+)", body)}


def test_the_php_kit_uses_the_table() -> None:
    source = (KIT / "Codes.php").read_text()
    assert _php_array(source, "ERRORS") == codes.ERRORS
    assert _php_array(source, "CLOSES") == codes.CLOSES


@pytest.mark.skipif(shutil.which("php") is None, reason="PHP is not installed (apt-get install php-cli)")
def test_the_php_kit_checks_pass() -> None:
    proc = subprocess.run(["php", str(REPO / "tests" / "php" / "kit_checks.php")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^\d+ checks, 0 failed$", proc.stdout, re.M), proc.stdout
