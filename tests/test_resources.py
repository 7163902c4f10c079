"""Hardware-dependent defaults: checkpointing only when memory needs it, bf16 only where fast."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig

from easyllm import ModelRunner
from easyllm.train.resources import (
    activation_bytes,
    cpu_bf16_speedup,
    free_memory_bytes,
    needs_gradient_checkpointing,
    prefers_bf16,
)
from easyllm.train.settings import TrainSettings

SMALL = LlamaConfig(hidden_size=576, num_hidden_layers=30)


def test_checkpointing_follows_free_memory(monkeypatch):
    cpu = torch.device("cpu")
    need = activation_bytes(SMALL, 8 * 512)
    monkeypatch.setattr("easyllm.train.resources.free_memory_bytes", lambda device: need * 10)
    assert not needs_gradient_checkpointing(SMALL, 8 * 512, cpu)
    monkeypatch.setattr("easyllm.train.resources.free_memory_bytes", lambda device: need)
    assert needs_gradient_checkpointing(SMALL, 8 * 512, cpu)


def test_training_arguments_decide_and_the_user_overrides(monkeypatch, tmp_path):
    # no memory at all
    monkeypatch.setattr("easyllm.train.resources.free_memory_bytes", lambda device: 1)
    args = TrainSettings().training_arguments(
        str(tmp_path), 0, False, model_config=SMALL, longest_example=512
    )
    assert args.gradient_checkpointing
    forced = TrainSettings(trainer_args={"gradient_checkpointing": False})
    assert not forced.training_arguments(
        str(tmp_path), 0, False, model_config=SMALL
    ).gradient_checkpointing


def test_cpu_trains_in_fp32_by_default(tmp_path):
    assert not prefers_bf16(torch.device("cpu"))
    assert free_memory_bytes(torch.device("cpu")) > 0
    assert not TrainSettings().training_arguments(str(tmp_path), 0, False).bf16


@pytest.mark.parametrize(("speedup", "expected"), [(3.8, True), (1.1, False), (0.5, False)])
def test_the_cpu_trains_in_bf16_where_its_bf16_matmuls_are_fast(
    monkeypatch, tmp_path, speedup, expected
):
    # 3.8: measured on a Xeon with AMX; 0.5: one with AVX512-BF16 only (bf16 half the fp32 rate)
    monkeypatch.setattr("easyllm.train.resources.cpu_bf16_speedup", lambda: speedup)
    assert prefers_bf16(torch.device("cpu")) is expected
    args = TrainSettings().training_arguments(str(tmp_path), 0, False)
    assert args.bf16 is expected
    forced = TrainSettings(trainer_args={"bf16": False})
    assert not forced.training_arguments(str(tmp_path), 0, False).bf16
    # 4-bit: fp32 path
    assert not TrainSettings(method="qlora").training_arguments(str(tmp_path), 0, False).bf16


def test_the_bf16_speedup_is_measured_on_this_cpu():
    cpu_bf16_speedup.cache_clear()
    try:
        assert 0 < cpu_bf16_speedup(tokens=64, hidden=64, wide=64) < 1000
    finally:
        cpu_bf16_speedup.cache_clear()


def _losses(tiny_model_dir, chats, tmp_path, bf16: bool) -> tuple[list[float], set]:
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0)
    matmul_dtypes = set()
    layer = runner.model.model.layers[0].mlp.down_proj
    hook = layer.register_forward_hook(lambda module, args, output: matmul_dtypes.add(output.dtype))
    result = runner.train(
        bf16=bf16,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        disable_tqdm=True,
        compile=False,
        output_dir=str(tmp_path / f"bf16-{bf16}"),
    )
    hook.remove()
    return [entry["loss"] for entry in result.log_history if "loss" in entry], matmul_dtypes


def test_bf16_training_runs_in_bf16_and_follows_the_fp32_loss_curve(
    tiny_model_dir, chats, tmp_path
):
    fp32, fp32_dtypes = _losses(tiny_model_dir, chats, tmp_path, bf16=False)
    bf16, bf16_dtypes = _losses(tiny_model_dir, chats, tmp_path, bf16=True)
    assert fp32_dtypes == {torch.float32}
    # the trained-token loss bypasses forward(): autocast must still apply
    assert bf16_dtypes == {torch.bfloat16}
    assert len(bf16) == len(fp32) == 6
    assert fp32 != bf16  # really a different precision
    for low, full in zip(bf16, fp32):
        assert abs(low - full) <= 0.02 * full  # within bf16 rounding noise, step by step
    assert bf16[-1] < bf16[0]


_MMAP_PROBE = """
import ctypes, json, sys
import torch
from easyllm.train.resources import release_freed_activations

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
released = release_freed_activations() if sys.argv[1] == "release" else None
big = torch.ones(20 << 20, dtype=torch.uint8)
# by default, freeing it raises glibc's mmap threshold to 20 MiB: a 12 MiB block then comes
# from the heap
del big
before = libc.mallinfo2().hblkhd
activation = torch.ones(12 << 20, dtype=torch.uint8)
while_alive = libc.mallinfo2().hblkhd - before
del activation
after_free = libc.mallinfo2().hblkhd - before
print(json.dumps({"released": released, "while_alive": while_alive, "after_free": after_free}))
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="glibc's allocator is what this changes"
)
def test_freed_activations_go_back_to_the_os_instead_of_staying_resident():
    """In fresh interpreters: the allocator's state after other tests would decide otherwise."""

    def probe(mode: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _MMAP_PROBE, mode], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    default, released = probe("default"), probe("release")
    assert default["while_alive"] == 0  # glibc's default: from the heap, where it stays when freed
    assert released["released"] is True
    assert released["while_alive"] >= 12 << 20  # its own mapping ...
    assert released["after_free"] < 1 << 20  # ... handed back to the OS when freed
