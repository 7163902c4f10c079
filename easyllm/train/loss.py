"""Cross-entropy only where labels are trained, in chunks, with its gradient in the same pass.

The output layer of a small model is a large share of its compute (SmolLM2: 576 x 49,152
weights, a fifth of each token's forward FLOPs), yet prompt and padding positions have no
label. This loss runs the output layer only on trained positions, a chunk at a time, so a
[tokens, vocab] float tensor never exists at once. While training, each chunk's gradient is
computed right after its loss (softmax minus one-hot, then back through the output layer) and
the logits are dropped: nothing is recomputed in the backward pass (recomputing each chunk's
logits took about 3% of a SmolLM2 LoRA step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.encoding import IGNORE_INDEX
from ..methods import without_adapter

CHUNK_TOKENS = 512  # one chunk's logits and their gradient: 2 x 512 x 49,152 bf16 values, 100 MB


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _loss_and_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy in fp32, its gradient w.r.t. the logits in the logits' dtype)."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_normalizer = torch.logsumexp(wide, dim=-1, keepdim=True)
    loss = (log_normalizer - wide.gather(1, targets[:, None])).sum()
    probabilities = torch.exp(wide - log_normalizer)
    is_target = torch.arange(wide.shape[1], device=wide.device) == targets[:, None]
    grad_logits = torch.where(is_target, probabilities - 1, probabilities)  # softmax - one-hot
    return loss, grad_logits.to(logits.dtype)


@functools.cache
def _compiled(function: Callable) -> Callable:
    """`function` fused by torch.compile: the logits' cast, log-sum-exp and gradient in a few passes
    over memory instead of one per operation (2.5x faster on a CPU with bf16 logits)."""
    return torch.compile(function, dynamic=True)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The output layer's matmul dtype: autocast's where it is on, else the weight's own."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class _OutputLayerLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` by chunks, gradients computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, loss_and_grad):
        # hidden [tokens, dim], targets [tokens]
        dtype, ctx.weight_dtype = _compute_dtype(weight), weight.dtype
        with torch.autocast(weight.device.type, enabled=False):
            weight_low = weight.to(dtype)
            total = hidden.new_zeros((), dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_weight = (
                torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            )
            for start in range(0, targets.numel(), chunk):
                piece = slice(start, start + chunk)
                hidden_low = hidden[piece].to(dtype)
                loss, grad_logits = loss_and_grad(hidden_low @ weight_low.t(), targets[piece])
                total += loss
                if grad_hidden is not None:
                    grad_hidden[piece] = grad_logits @ weight_low
                if grad_weight is not None:
                    grad_weight += grad_logits.t() @ hidden_low
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_total.float()
        return (
            None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
            None,
            None,
            None,
        )


def _plain_output_layer(head: nn.Module) -> bool:
    """The fused loss needs a bias-free nn.Linear (not a LoRA- or 4-bit-wrapped one)."""
    return type(head) is nn.Linear and head.bias is None


def trained_token_loss_sum(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    chunk: int = CHUNK_TOKENS,
    *,
    compiled: bool = False,
) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses, number of trained tokens) for hidden states [batch, seq, dim]."""
    hidden, targets = hidden[:, :-1], labels[:, 1:]
    trained = targets != IGNORE_INDEX
    hidden, targets = hidden[trained], targets[trained]
    count = int(targets.numel())
    if torch.is_grad_enabled() and _plain_output_layer(head):
        loss_and_grad = _compiled(_loss_and_logit_grad) if compiled else _loss_and_logit_grad
        return _OutputLayerLoss.apply(hidden, head.weight, targets, chunk, loss_and_grad), count
    chunk_loss = _compiled(_chunk_loss) if compiled else _chunk_loss
    # Another output layer: recompute each chunk's logits in the backward.
    if torch.is_grad_enabled():
        chunk_loss = functools.partial(checkpoint, chunk_loss, use_reentrant=False)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        piece = slice(start, start + chunk)
        total = total + chunk_loss(hidden[piece], targets[piece], head)
    return total, count


def trained_token_loss(
    model, batch: dict[str, torch.Tensor], *, compiled: bool = False
) -> tuple[torch.Tensor, int]:
    """(loss sum, trained token count) of a causal LM (with or without peft) on a batch with labels.

    `use_cache=False` matters: with a cache, transformers ignores packed position ids and
    would let packed examples attend to each other. `compiled`: fuse the output layer's loss.
    """
    base = without_adapter(model)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    return trained_token_loss_sum(
        hidden, batch["labels"], base.get_output_embeddings(), compiled=compiled
    )
