"""Batched and streamed generation whose prompts are rendered exactly as in training."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .data.encoding import ChatEncoder
from .data.formats import Message

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Qwen3-style templates train an empty reasoning block before each reply; it is not an answer.
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")


def _generation_kwargs(encoder: ChatEncoder, max_new_tokens: int, stop: list[str] | None, sampling: dict) -> dict:
    """Greedy unless a sampling option is given; stop at end-of-turn and at any `stop` string."""
    if any(key in sampling for key in SAMPLING_KEYS):
        sampling.setdefault("do_sample", True)
    sampling.setdefault("do_sample", False)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": encoder.end_of_turn_ids,
        "pad_token_id": encoder.tokenizer.pad_token_id,
        **sampling,
    }
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=encoder.tokenizer)
    return kwargs


def _cut_at_stop(text: str, stop: list[str] | None) -> str:
    for marker in stop or ():
        if marker in text:
            text = text[: text.index(marker)]
    return text


@torch.inference_mode()
def generate_replies(
    model, encoder: ChatEncoder, conversations: list[list[Message]], max_new_tokens: int,
    stop: list[str] | None = None, **sampling: Any,
) -> list[str]:
    """Reply to each conversation; prompts are left-padded into one batch, stop at end-of-turn."""
    tokenizer = encoder.tokenizer
    prompts = [encoder.encode_prompt(messages) for messages in conversations]
    longest = max(len(prompt) for prompt in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention.to(device),
        **_generation_kwargs(encoder, max_new_tokens, stop, sampling),
    )
    model.train(was_training)
    texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in output[:, longest:]]
    return [_cut_at_stop(_EMPTY_THINK.sub("", text), stop).strip() for text in texts]


def stream_reply(
    model, encoder: ChatEncoder, messages: list[Message], max_new_tokens: int,
    stop: list[str] | None = None, **sampling: Any,
) -> Iterator[str]:
    """Yield the reply's text piece by piece as it is generated (generation runs in a thread)."""
    from transformers import TextIteratorStreamer

    prompt = torch.tensor([encoder.encode_prompt(messages)], device=next(model.parameters()).device)
    streamer = TextIteratorStreamer(encoder.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = _generation_kwargs(encoder, max_new_tokens, stop, sampling)
    was_training = model.training
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), streamer=streamer, **kwargs)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        worker.join()
        model.train(was_training)
