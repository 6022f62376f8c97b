"""The broken variants patch the reference by name, and fail loudly when a name is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.variants import VARIANTS, patch

REPO = Path(__file__).resolve().parents[1]


def test_patch_refuses_a_name_the_owner_does_not_have() -> None:
    class Owner:
        present = 1

    with pytest.raises(AttributeError, match=r"Owner\.absent does not exist"):
        patch(Owner, "absent", 2)
    assert not hasattr(Owner, "absent")
    assert patch(Owner, "present", 3) == 1 and Owner.present == 3


def test_every_variant_applies_to_the_reference_as_it_is() -> None:
    """Each variant's patch points exist (in a fresh interpreter: the patches stay there)."""
    names = [v.name for v in VARIANTS]
    code = "import sys\nfrom tests.variants import apply\nfor name in sys.argv[1:]:\n    apply(name)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
