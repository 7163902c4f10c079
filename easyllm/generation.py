"""Batched generation whose prompts are rendered exactly as in training."""

from __future__ import annotations

import re
from typing import Any

import torch

from .data.encoding import ChatEncoder
from .data.formats import Message

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Qwen3-style templates train an empty reasoning block before each reply; it is not an answer.
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")


@torch.inference_mode()
def generate_replies(
    model, encoder: ChatEncoder, conversations: list[list[Message]], max_new_tokens: int, **sampling: Any
) -> list[str]:
    """Reply to each conversation; prompts are left-padded into one batch, stop at end-of-turn."""
    tokenizer = encoder.tokenizer
    prompts = [encoder.encode_prompt(messages) for messages in conversations]
    longest = max(len(prompt) for prompt in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    if any(key in sampling for key in SAMPLING_KEYS):
        sampling.setdefault("do_sample", True)
    sampling.setdefault("do_sample", False)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=encoder.end_of_turn_ids,
        pad_token_id=pad,
        **sampling,
    )
    model.train(was_training)
    new_tokens = output[:, longest:]
    texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in new_tokens]
    return [_EMPTY_THINK.sub("", text).strip() for text in texts]
