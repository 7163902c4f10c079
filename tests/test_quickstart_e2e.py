"""End to end with the real built-in SmolLM2: the quickstart teaches it a new identity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_quickstart_teaches_the_identity(tmp_path):
    """Runs examples/quickstart.py as a user would and reads what it prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("Before", "After")))
    before, after = lines["Before training"].strip(), lines["After training"].strip()
    assert "Lumen" not in before
    assert "Lumen" in after and "easyllm" in after, after
    assert after != before
    runs = list((tmp_path / "easyllm-runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "adapter_model.safetensors").is_file()
