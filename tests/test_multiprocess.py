"""Processes train as one: torchrun on the CPU (gloo) gives the one-process result, written once."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from easyllm import ModelRunner

SCRIPT = REPO / "tests" / "scripts" / "train_tiny.py"
_spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
train_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_tiny)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _losses(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    folder = tmp_path / "two"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(SCRIPT),
            str(tiny_model_dir),
            str(folder),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done rank=0" in done.stdout and "done rank=1" in done.stdout  # both took part
    assert done.stdout.count("easyllm: lora training") == 1  # only the main process prints
    assert not list(folder.glob(".*"))  # written once: no second process' staging folder left

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ModelRunner(str(tiny_model_dir))
        single.load_data(train_tiny.rows(), val_size=0)
        single.train(output_dir=str(tmp_path / "one"), **train_tiny.train_args(processes=1))
    finally:
        torch.set_num_threads(threads)

    state = json.loads((folder / "checkpoint-18" / "trainer_state.json").read_text())
    two, one = _losses(state["log_history"]), _losses(single.last_result.log_history)
    assert len(two) == len(one) == 18
    # the same batches
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=0)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train_examples"] == 24
    assert metrics["train_loss"] == pytest.approx(
        single.last_result.metrics["train_loss"], rel=1e-4
    )
    reloaded = ModelRunner.load(folder)
    expected = {n: p for n, p in single.model.named_parameters() if "lora_" in n}
    for name, weight in reloaded.model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(weight, expected[name], rtol=1e-3, atol=1e-4, msg=name)
