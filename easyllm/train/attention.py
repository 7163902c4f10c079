"""Attention for packed batches: each example attends to itself only, and no mask tensor exists.

Packed examples (data/packing.py) keep restarting position ids. transformers reads those as
packed sequences and builds a block-diagonal [batch, 1, tokens, tokens] mask; with any mask,
torch's CPU flash-attention kernel computes every block, masked or not, and ran at a few
GFLOP/s: a quarter of a SmolLM2 LoRA step. Here each example's span gets its own causal call
(`is_causal=True`: the fast kernel, only the work the causal pattern needs, grouped-query
attention without copying keys and values), so a batch can be one flattened row with no padding.
On the CPU all spans go through one autograd Function (bf16 forward, fp32 backward: see
`_CpuSpanAttention`); elsewhere through autograd span by span.

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
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from ..methods import without_adapter

NAME = "easyllm_packed"


def example_spans(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of each example: one begins wherever the position does not go up by one."""
    breaks = (position_ids[:, 1:] - position_ids[:, :-1] != 1).nonzero().tolist()
    length = position_ids.shape[1]
    spans, row_start = [], {row: 0 for row in range(position_ids.shape[0])}
    for row, index in breaks:
        spans.append((row, row_start[row], index + 1))
        row_start[row] = index + 1
    spans.extend((row, start, length) for row, start in row_start.items())
    return sorted(spans)


def _attend(
    spans: list[tuple[int, int, int]],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """Causal attention within each span, through autograd; [batch, heads, tokens, dim]."""
    rows: list[list[torch.Tensor]] = [[] for _ in range(query.shape[0])]
    for row, start, end in spans:
        rows[row].append(
            F.scaled_dot_product_attention(
                query[row : row + 1, :, start:end],
                key[row : row + 1, :, start:end],
                value[row : row + 1, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
                enable_gqa=key.shape[1] != query.shape[1],
            )
        )
    return torch.cat([torch.cat(pieces, dim=2) for pieces in rows], dim=0)


class _CpuSpanAttention(torch.autograd.Function):
    """Per-span causal flash attention on the CPU: forward in the inputs' dtype, backward in fp32.

    torch's CPU flash kernel runs its bf16 forward fast (AMX) but its bf16 backward at a fraction
    of its fp32 backward; each span's output and log-sum-exp are kept, so nothing is recomputed.
    One Function for all spans: through autograd, every span's slice would add a zero-filled
    full-size gradient per layer (a tenth of a step).
    """

    @staticmethod
    def forward(ctx, query, key, value, spans, scaling):
        # query, key, value [batch, heads, tokens, dim] -> output [batch, tokens, heads, dim]
        groups = query.shape[1] // key.shape[1]
        output = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
        logsumexps = []
        for row, start, end in spans:
            piece, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query[row : row + 1, :, start:end],
                repeat_kv(key[row : row + 1, :, start:end], groups),
                repeat_kv(value[row : row + 1, :, start:end], groups),
                0.0,
                True,
                scale=scaling,
            )
            output[row : row + 1, start:end] = piece.transpose(1, 2)
            logsumexps.append(logsumexp)
        ctx.save_for_backward(query, key, value, output, *logsumexps)
        ctx.spans, ctx.scaling, ctx.groups = spans, scaling, groups
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, output, *logsumexps = ctx.saved_tensors
        groups, work = ctx.groups, torch.promote_types(query.dtype, torch.float32)
        grads = [torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)]
        for (row, start, end), logsumexp in zip(ctx.spans, logsumexps):
            query_span, key_span, value_span = (
                t[row : row + 1, :, start:end].to(work) for t in (query, key, value)
            )
            grad_query, grad_key, grad_value = (
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                    grad_output[row : row + 1, start:end].transpose(1, 2).to(work),
                    query_span,
                    repeat_kv(key_span, groups),
                    repeat_kv(value_span, groups),
                    output[row : row + 1, start:end].transpose(1, 2).to(work),
                    logsumexp,
                    0.0,
                    True,
                    scale=ctx.scaling,
                )
            )
            # Each key/value head served `groups` query heads: their gradients add up.
            if groups > 1:
                grad_key = grad_key.unflatten(1, (-1, groups)).sum(2)
                grad_value = grad_value.unflatten(1, (-1, groups)).sum(2)
            for grad, piece in zip(grads, (grad_query, grad_key, grad_value)):
                grad[row : row + 1, :, start:end] = piece
        return *grads, None, None


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
    """An AttentionInterface function: [batch, heads, tokens, dim] -> [batch, tokens, heads, dim].

    Under autocast, the inputs are rounded to bf16 as autocast's own attention would.
    """
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        # Not a training forward: the usual path.
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    spans = example_spans(position_ids.expand(query.shape[0], -1))
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    with torch.autocast(query.device.type, enabled=False):
        if query.device.type == "cpu" and dropout == 0.0:
            output = _CpuSpanAttention.apply(query, key, value, spans, scaling)
        else:
            output = _attend(spans, query, key, value, dropout, scaling).transpose(1, 2)
    return output.to(value.dtype).contiguous(), None


AttentionInterface.register(NAME, packed_attention_forward)


def supports_packed_attention(model: nn.Module, max_length: int) -> bool:
    """True where per-example causal attention is exactly what the model's attention computes."""
    base = without_adapter(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    can_switch = getattr(base, "_can_set_attn_implementation", None)
    if can_switch is None or not can_switch():
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    return not getattr(text, "attn_logit_softcapping", None) and (
        window is None or window >= max_length
    )


@contextlib.contextmanager
def packed_attention(model: nn.Module, enabled: bool) -> Iterator[bool]:
    """Use per-example attention for the duration of the block (training); the model's own after."""
    base = without_adapter(model)
    previous = base.config._attn_implementation if enabled else None
    if enabled:
        base.set_attn_implementation(NAME)
    try:
        yield enabled
    finally:
        if enabled:
            base.set_attn_implementation(previous)
