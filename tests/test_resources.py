"""Hardware-dependent defaults: checkpointing only when memory needs it, bf16 only where it is fast."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig

from easyllm.config import TrainSettings
from easyllm.resources import (
    activation_bytes,
    free_memory_bytes,
    needs_gradient_checkpointing,
    prefers_bf16,
)

SMALL = LlamaConfig(hidden_size=576, num_hidden_layers=30)


def test_checkpointing_follows_free_memory(monkeypatch):
    cpu = torch.device("cpu")
    need = activation_bytes(SMALL, 8 * 512)
    monkeypatch.setattr("easyllm.resources.free_memory_bytes", lambda device: need * 10)
    assert not needs_gradient_checkpointing(SMALL, 8 * 512, cpu)
    monkeypatch.setattr("easyllm.resources.free_memory_bytes", lambda device: need)
    assert needs_gradient_checkpointing(SMALL, 8 * 512, cpu)


def test_training_arguments_decide_and_the_user_overrides(monkeypatch, tmp_path):
    monkeypatch.setattr("easyllm.resources.free_memory_bytes", lambda device: 1)  # no memory at all
    args = TrainSettings().training_arguments(str(tmp_path), 0, False, model_config=SMALL, max_length=512)
    assert args.gradient_checkpointing
    forced = TrainSettings(trainer_args={"gradient_checkpointing": False})
    assert not forced.training_arguments(str(tmp_path), 0, False, model_config=SMALL).gradient_checkpointing


def test_cpu_trains_in_fp32_by_default(tmp_path):
    assert not prefers_bf16(torch.device("cpu"))
    assert free_memory_bytes(torch.device("cpu")) > 0
    assert not TrainSettings().training_arguments(str(tmp_path), 0, False).bf16


FRAGMENTING_STEP = """
import sys, torch
from easyllm.resources import return_freed_memory_promptly
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "tuned":
    assert return_freed_memory_promptly()
big = torch.ones(16 << 20, dtype=torch.uint8)
del big  # glibc now keeps blocks up to 16 MiB on its heap
before = rss()
blocks = [torch.ones(4 << 20, dtype=torch.uint8) for _ in range(100)]  # 400 MiB of "activations"
kept = blocks[::10]  # a few survive the step, as saved tensors do
del blocks
print((rss() - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning applies on Linux only")
def test_freed_activations_go_back_to_the_system():
    def held_mib(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FRAGMENTING_STEP, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    untuned, tuned = held_mib("default"), held_mib("tuned")
    assert tuned < 80  # the 10 surviving blocks (40 MiB) and little else
    assert untuned > 2 * tuned  # glibc's default keeps the freed blocks resident
