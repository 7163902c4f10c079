"""Attention for packed batches: each example attends to itself only, and no mask tensor exists.

Packed examples (data/packing.py) keep restarting position ids. transformers reads those as
packed sequences and builds a block-diagonal [batch, 1, tokens, tokens] mask; with any mask,
torch's CPU flash-attention kernel computes every block, masked or not, and ran at a few
GFLOP/s: a quarter of a SmolLM2 LoRA step. Here each example's span gets its own causal call
(`is_causal=True`: the fast kernel, only the work the causal pattern needs, grouped-query
attention without copying keys and values), so a batch can be one flattened row with no padding.

It is switched on for training only (`packed_attention`), for models that use transformers'
SDPA attention without a sliding window shorter than an example or logit soft-capping; other
models keep transformers' mask, which is as correct, only slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "easyllm_packed"


def example_spans(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example: a new one begins wherever the position does not go up by one."""
    breaks = (position_ids[:, 1:] - position_ids[:, :-1] != 1).nonzero().tolist()
    length = position_ids.shape[1]
    spans, row_start = [], {row: 0 for row in range(position_ids.shape[0])}
    for row, index in breaks:
        spans.append((row, row_start[row], index + 1))
        row_start[row] = index + 1
    spans.extend((row, start, length) for row, start in row_start.items())
    return sorted(spans)


def _attend(spans: list[tuple[int, int, int]], batch: int, query: torch.Tensor, key: torch.Tensor,
            value: torch.Tensor, dropout: float, scaling: float | None) -> torch.Tensor:
    """Causal attention within each span, in fp32 on the CPU; [batch, heads, tokens, dim]."""
    grouped = key.shape[1] != query.shape[1]
    if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
        query, key, value = query.float(), key.float(), value.float()  # bf16's CPU backward: 5-8x its forward
    rows: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    with torch.autocast(query.device.type, enabled=False):
        for row, start, end in spans:
            rows[row].append(F.scaled_dot_product_attention(
                query[row:row + 1, :, start:end], key[row:row + 1, :, start:end], value[row:row + 1, :, start:end],
                dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=grouped,
            ))
    return torch.cat([torch.cat(pieces, dim=2) for pieces in rows], dim=0)


@torch.compiler.disable  # a loop over data-dependent spans: compiled layers run it as it is
def packed_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [batch, heads, tokens, dim] -> [batch, tokens, heads, dim].

    Under autocast, the inputs are rounded to bf16 as autocast's own attention would. On the CPU
    only they are kept for the backward pass, which recomputes the (cheap) fp32 attention from
    them: fp32 copies of queries, keys, values and outputs would be a quarter of a step's activations.
    """
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)  # not a training forward: the usual path
    spans = example_spans(position_ids.expand(query.shape[0], -1))
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        output = checkpoint(_attend, spans, query.shape[0], query, key, value, dropout, scaling,
                            use_reentrant=False)
    else:
        output = _attend(spans, query.shape[0], query, key, value, dropout, scaling)
    return output.to(value.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_attention_forward)


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_packed_attention(model: nn.Module, max_length: int) -> bool:
    """True where per-example causal attention is exactly what the model's own attention computes."""
    base = _base(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    can_switch = getattr(base, "_can_set_attn_implementation", None)
    if can_switch is None or not can_switch():
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    return not getattr(text, "attn_logit_softcapping", None) and (window is None or window >= max_length)


@contextlib.contextmanager
def packed_attention(model: nn.Module, enabled: bool) -> Iterator[bool]:
    """Use per-example attention for the duration of the block (training); the model's own after."""
    base = _base(model)
    previous = base.config._attn_implementation if enabled else None
    if enabled:
        base.set_attn_implementation(NAME)
    try:
        yield enabled
    finally:
        if enabled:
            base.set_attn_implementation(previous)
