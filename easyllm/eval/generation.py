"""Batched and streamed generation whose prompts are rendered exactly as in training."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..data.encoding import ChatEncoder
from ..data.formats import Message

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Qwen3-style templates train an empty reasoning block before each reply; it is not an answer.
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")


def _generation_kwargs(
    encoder: ChatEncoder, max_new_tokens: int, stop: list[str] | None, sampling: dict
) -> dict:
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


@dataclass(frozen=True)
class Reply:
    """One generated reply and why it ended: "stop" (end-of-turn or a stop string) or "length"."""

    text: str
    finish_reason: Literal["stop", "length"]
    generated_tokens: int  # tokens the model produced, end-of-turn included


@torch.inference_mode()
def generate_batch(
    model,
    encoder: ChatEncoder,
    conversations: list[list[Message]],
    max_new_tokens: int,
    stop: list[str] | None = None,
    *,
    batch_size: int = 16,
    **sampling: Any,
) -> list[Reply]:
    """Reply to each conversation, `batch_size` left-padded prompts at a time, until end-of-turn.

    A reply that used all `max_new_tokens` without an end-of-turn token or stop string is
    marked finish_reason="length": it was cut off, not finished.
    """
    was_training = model.training
    model.eval()
    try:
        return [
            reply
            for start in range(0, len(conversations), batch_size)
            for reply in _generate_one_batch(
                model,
                encoder,
                conversations[start : start + batch_size],
                max_new_tokens,
                stop,
                dict(sampling),
            )
        ]
    finally:
        model.train(was_training)


def _generate_one_batch(
    model,
    encoder: ChatEncoder,
    conversations: list[list[Message]],
    max_new_tokens: int,
    stop: list[str] | None,
    sampling: dict,
) -> list[Reply]:
    tokenizer = encoder.tokenizer
    prompts = [encoder.encode_prompt(messages) for messages in conversations]
    longest = max(len(prompt) for prompt in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        **_generation_kwargs(encoder, max_new_tokens, stop, sampling),
    )
    end_of_turn = set(encoder.end_of_turn_ids)
    replies = []
    for tokens in output[:, longest:].tolist():
        ended = next((i for i, token in enumerate(tokens) if token in end_of_turn), None)
        produced = tokens if ended is None else tokens[: ended + 1]
        raw = tokenizer.decode(produced, skip_special_tokens=True)
        text = _cut_at_stop(_EMPTY_THINK.sub("", raw), stop).strip()
        stopped = ended is not None or any(marker in raw for marker in stop or ())
        replies.append(Reply(text, "stop" if stopped else "length", len(produced)))
    return replies


def reply_to(
    model,
    encoder: ChatEncoder,
    prompt: str | list[Message] | list[str],
    *,
    max_new_tokens: int,
    system: str | None,
    stop: list[str] | None,
    batch_size: int,
    return_details: bool,
    **sampling: Any,
) -> str | Reply | list[str] | list[Reply]:
    """`ModelRunner.generate`: a str or a message list gets one answer, a list of str a list."""
    single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], dict))
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        return []
    conversations = [as_conversation(p, system) for p in prompts]
    replies = generate_batch(
        model, encoder, conversations, max_new_tokens, stop, batch_size=batch_size, **sampling
    )
    if not return_details:
        replies = [reply.text for reply in replies]
    return replies[0] if single else replies


def as_conversation(prompt: str | list[Message], system: str | None = None) -> list[Message]:
    """A prompt as the messages generate() renders: a str is one user turn; `system` goes first."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def stream_reply(
    model,
    encoder: ChatEncoder,
    messages: list[Message],
    max_new_tokens: int,
    stop: list[str] | None = None,
    **sampling: Any,
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
            model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                streamer=streamer,
                **kwargs,
            )

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        worker.join()
        model.train(was_training)
