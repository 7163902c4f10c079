"""Hardware-dependent defaults: checkpointing only when memory needs it, bf16 only where it is fast."""

from __future__ import annotations

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

