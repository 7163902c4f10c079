"""Held-out loss and perplexity, weighted by trained token (not averaged per batch)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from datasets import Dataset

from .loss import trained_token_loss


@torch.inference_mode()
def evaluate_loss(model, dataset: Dataset, collator: Callable, batch_size: int = 8) -> dict[str, float]:
    """Mean cross-entropy over every trained token of `dataset`, and its perplexity."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {key: value.to(device) for key, value in batch.items()}
        loss_sum, count = trained_token_loss(model, batch)
        total_loss += loss_sum.item()
        total_tokens += count
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "eval_examples": len(dataset),
        "eval_tokens": total_tokens,
    }
