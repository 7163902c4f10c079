"""Choices that depend on the hardware: gradient checkpointing and bf16, decided once per run."""

from __future__ import annotations

import os

import torch

# Bytes of saved activations per token, per layer, per unit of hidden size, in fp32 LoRA training
# (attention inputs/outputs, the MLP's wider intermediates, norms, rotary copies). Measured on
# SmolLM2-135M: 3.1 GB are saved for backward for 4 x 480 packed tokens (~92 bytes), and the
# process's resident memory grows by ~1.6x that (glibc keeps freed activations on its heap;
# handing them back at once cost 60% of the step time). 8 x 512 tokens: 10.4 GB resident.
_ACTIVATION_BYTES_PER_HIDDEN = 160
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

