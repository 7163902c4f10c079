"""End to end with the real built-in SmolLM2: the quickstart teaches it a new identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_quickstart_teaches_the_identity(tmp_path):
    """Runs examples/quickstart.py as a user would and reads what it prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(
        line.split(":", 1)
        for line in done.stdout.splitlines()
        if line.startswith(("Before", "After"))
    )
    before, after = lines["Before training"].strip(), lines["After training"].strip()
    assert "Lumen" not in before
    assert "Lumen" in after and "easyllm" in after, after
    assert after != before
    runs = list((tmp_path / "easyllm-runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "adapter_model.safetensors").is_file()
    _check_evaluation(runs[0])


def _check_evaluation(run: Path) -> None:
    """The trained run, reloaded, beats its own base model on the held-out identity questions."""
    from easyllm import ModelRunner

    written = json.loads((run / "evaluation.json").read_text())  # by train(), on the held-out rows
    assert written["metrics"]["runaway_rate"] == 0.0 and len(written["samples"]) == 4
    runner = ModelRunner.load(run)
    # the same seed holds out the same rows
    runner.load_data(REPO / "examples" / "data" / "identity.jsonl")
    result = runner.evaluate(compare=True)
    shown = (
        {k: round(v, 3) for k, v in result.items()},
        [(s.reply, s.other_reply) for s in result.samples],
    )
    assert result["rouge_l"] > result["base_rouge_l"] + 0.2, shown
    assert (
        result["token_f1"] > result["base_token_f1"]
        and result["exact_match"] >= result["base_exact_match"]
    ), shown
    assert result["runaway_rate"] == 0.0, shown
    assert result["eval_loss"] < result["base_eval_loss"], shown
    assert [s["reference"] for s in written["samples"]] == [s.reference for s in result.samples]
