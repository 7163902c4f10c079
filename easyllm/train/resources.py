"""Choices that depend on the hardware: gradient checkpointing and bf16, decided once per run."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import time

import torch

# Bytes of saved activations per token, per layer, per unit of hidden size, in fp32 LoRA training
# (attention inputs/outputs, the MLP's wider intermediates, norms, rotary copies). Measured on
# SmolLM2-135M: 3.1 GB are saved for backward for 4 x 480 packed tokens (~92 bytes), and the
# process's resident memory grows by ~1.6x that (glibc keeps freed activations on its heap;
# handing them back at once cost 60% of the step time). 8 x 512 tokens: 10.4 GB resident.
# bf16 autocast keeps about half (36-57 bytes saved, compiled or not).
_ACTIVATION_BYTES_PER_HIDDEN = {False: 160, True: 80}  # by bf16
# Checkpoint when activations would need more than this share of available memory.
_MEMORY_SHARE = 0.5


def free_memory_bytes(device: torch.device) -> int:
    """Memory a run may take: free GPU memory, or what Linux calls available (page cache too)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return _linux_available_bytes() or _free_pages_bytes()


def _linux_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None  # not Linux (or a kernel without MemAvailable)


def _free_pages_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # unknown platform: assume a modest machine


def activation_bytes(config, tokens_per_step: int, bf16: bool = False) -> int:
    layers = getattr(config, "num_hidden_layers", 12)
    hidden = getattr(config, "hidden_size", 768)
    return tokens_per_step * layers * hidden * _ACTIVATION_BYTES_PER_HIDDEN[bf16]


def needs_gradient_checkpointing(
    config, tokens_per_step: int, device: torch.device, bf16: bool = False
) -> bool:
    """Recompute activations only if keeping them would crowd memory; it costs 30-100% of a step."""
    needed = activation_bytes(config, tokens_per_step, bf16)
    return needed > _MEMORY_SHARE * free_memory_bytes(device)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 8 << 20


@functools.cache
def release_freed_activations() -> bool:
    """Have glibc serve blocks over 8 MiB by mmap: memory a training step frees goes back at once.

    glibc raises its mmap threshold (up to 32 MiB) whenever a large block is freed; from then on
    activations come from the heap, and what is freed between them stays resident: ~0.5 GiB of a
    SmolLM2 LoRA step's 4 GiB peak here. A fixed 8 MiB threshold measured no slower (1 MiB was
    40% slower: page faults on every large tensor). Process-wide and kept; False where there is
    no glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def prefers_bf16(device: torch.device) -> bool:
    """bf16 autocast where it is fast: CUDA GPUs that support it, CPUs whose bf16 matmuls are.

    CPUs differ too much to decide from their flags: with AMX (Sapphire Rapids and later) a bf16
    matmul ran 3-4x faster than fp32 here and a training step ~2x faster; with only AVX512-BF16
    it ran at half the fp32 rate. So the CPU measures it, once per process.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_speedup() >= _BF16_SPEEDUP_NEEDED


_BF16_SPEEDUP_NEEDED = 1.5  # below this, bf16's rounding is not worth it


@functools.cache
def cpu_bf16_speedup(tokens: int = 2048, hidden: int = 576, wide: int = 1536) -> float:
    """How many times faster a bf16 matmul runs than an fp32 one on this CPU (~0.1 s to measure).

    The shape: a small model's MLP projection over a step's tokens, what training multiplies most.
    """

    def best_seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(tokens, hidden, dtype=dtype), torch.randn(hidden, wide, dtype=dtype)
        a @ b  # first call: kernel selection, page faults
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        return best_seconds(torch.float32) / best_seconds(torch.bfloat16)
