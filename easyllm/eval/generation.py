"""Batched and streamed generation whose prompts are rendered exactly as in training."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import StoppingCriteria

from ..data.encoding import ChatEncoder
from ..data.formats import Message

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Qwen3-style templates train an empty reasoning block before each reply; it is not an answer.
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")


class Cancelled(StoppingCriteria):
    """Stops generate() at the next token once `event` is set (e.g. the client hung up)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


def _generation_kwargs(
    encoder: ChatEncoder,
    max_new_tokens: int,
    stop: list[str] | None,
    sampling: dict,
    cancel: threading.Event | None = None,
) -> dict:
    """Greedy unless sampling is asked for; stop at end-of-turn, a `stop` string or `cancel`."""
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
    if cancel is not None:
        kwargs["stopping_criteria"] = [Cancelled(cancel)]
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
    finish_reason: Literal["stop", "length", "content_filter"]  # the last: an endpoint's filter
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
    cancel: threading.Event | None = None,
    **sampling: Any,
) -> list[Reply]:
    """Reply to each conversation, `batch_size` left-padded prompts at a time, until end-of-turn.

    A reply that used all `max_new_tokens` without an end-of-turn token or stop string is
    marked finish_reason="length": it was cut off, not finished. Setting `cancel` ends every
    reply at its next token.
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
                cancel,
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
    cancel: threading.Event | None,
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
        **_generation_kwargs(encoder, max_new_tokens, stop, sampling, cancel),
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
    *,
    cancel: threading.Event | None = None,
    **sampling: Any,
) -> Iterator[str]:
    """Yield the reply's text piece by piece as it is generated (generation runs in a thread).

    The text ends before any `stop` string, as generate()'s does. An error in generation is
    raised here, in the reader; closing the iterator early (or setting `cancel`) stops it.
    """
    from transformers import TextIteratorStreamer

    prompt = torch.tensor([encoder.encode_prompt(messages)], device=next(model.parameters()).device)
    streamer = TextIteratorStreamer(encoder.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = cancel or threading.Event()
    kwargs = _generation_kwargs(encoder, max_new_tokens, stop, sampling, cancel)
    failures: list[BaseException] = []
    was_training = model.training
    model.eval()

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    streamer=streamer,
                    **kwargs,
                )
        except BaseException as exc:  # noqa: BLE001 (handed to the reader, who raises it)
            failures.append(exc)
            streamer.end()  # without it the reader would wait for text for ever

    worker = threading.Thread(target=run, name="easyllm-stream", daemon=True)
    worker.start()
    finished = False
    try:
        yield from cut_at_stop_stream(streamer, stop, cancel)
        finished = True
    finally:
        if not finished:  # the reader left early: stop generating for nobody
            cancel.set()
        worker.join()
        model.train(was_training)
    if failures:
        raise failures[0]


def cut_at_stop_stream(
    pieces: Iterable[str], stop: list[str] | None, cancel: threading.Event | None = None
) -> Iterator[str]:
    """`pieces` up to the first stop string; text that may begin one is held back until known.

    >>> list(cut_at_stop_stream(["Hel", "lo. Us", "er: hi"], ["User:"]))
    ['Hel', 'lo. ']
    """
    if not stop:
        yield from pieces
        return
    held = ""
    for piece in pieces:
        held += piece
        found = [held.index(marker) for marker in stop if marker in held]
        if found:
            if held[: min(found)]:
                yield held[: min(found)]
            if cancel is not None:
                cancel.set()
            return
        keep = max(
            (k for marker in stop for k in range(1, len(marker)) if held.endswith(marker[:k])),
            default=0,
        )
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep :]
    if held:
        yield held
