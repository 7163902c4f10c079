"""Choices that depend on the hardware: gradient checkpointing and bf16, decided once per run."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

# Bytes of saved activations per token, per layer, per unit of hidden size, in fp32 LoRA training
# (attention inputs/outputs, the MLP's wider intermediates, norms, rotary copies). Measured on
# SmolLM2-135M, 4 x 480 packed tokens: 3.1 GB saved for backward (~92 bytes), rounded up.
_ACTIVATION_BYTES_PER_HIDDEN = 100
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_MMAP_THRESHOLD_BYTES = 1 << 20
_MEMORY_SHARE = 0.5  # checkpoint when activations would need more than this share of free memory


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # unknown platform: assume a modest machine


def activation_bytes(config, tokens_per_step: int) -> int:
    layers = getattr(config, "num_hidden_layers", 12)
    hidden = getattr(config, "hidden_size", 768)
    return tokens_per_step * layers * hidden * _ACTIVATION_BYTES_PER_HIDDEN


def needs_gradient_checkpointing(config, tokens_per_step: int, device: torch.device) -> bool:
    """Recompute activations only when keeping them would crowd memory; it costs ~30% speed."""
    return activation_bytes(config, tokens_per_step) > _MEMORY_SHARE * free_memory_bytes(device)


def prefers_bf16(device: torch.device) -> bool:
    """bf16 where it is fast: CUDA GPUs that support it.

    On CPUs, even with AVX512-BF16, autocast measured slower than fp32 for small models here
    (benchmarks/), so the CPU stays in fp32 unless the user passes bf16=True.
    """
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def return_freed_memory_promptly() -> bool:
    """Make glibc hand large freed blocks (activations) back to the system at once; True if done.

    glibc raises its mmap threshold each time a large block is freed, after which activations
    live on its heap and freed ones stay there, fragmented: a SmolLM2 LoRA step with 4 x 480
    tokens peaked at 6.0 GiB resident with glibc's default and 4.1 GiB with a fixed 1 MiB
    threshold, for the same 3.1 GB of activations. Other platforms and allocators are left as they are.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
