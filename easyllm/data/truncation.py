"""The one place sequences are cut to `max_length`, with each task's policy named as data.

`max_length` is a data option (`load_data(max_length=...)`), saved with the model, and every
later encoding (evaluate(data=...), predict()) cuts with the same value. What "cut" means
depends on the task, and each task names its policy in its capabilities:

| policy | tasks | what happens to an example over max_length |
|---|---|---|
| OLDEST_TURNS | sft | drop the oldest exchanges (keeping the system prompt), then cut the end |
| REPLY_END | dpo, kto, orpo | keep the prompt, cut the replies' ends (counted as unterminated) |
| DROP | rm | skip the pair (a reward is read at the last token; a cut reply has none) |
| TEXT_END | classify | cut the text's end (the tokenizer's truncation) |
| BLOCKS | pt | documents are packed into blocks of max_length tokens; nothing is lost |
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from transformers import PreTrainedTokenizerBase

from .encoding import ChatEncoder, Encoded

NO_LIMIT = 10**8  # tokenizers say 1e30 for "no limit"


class Truncation(Enum):
    """How a task fits an example into max_length (see the module docstring)."""

    OLDEST_TURNS = "drop the oldest turns, then cut the end"
    REPLY_END = "cut the end of the replies"
    DROP = "skip the example"
    TEXT_END = "cut the end of the text"
    BLOCKS = "pack into blocks of max_length tokens"


def fit_conversation(
    encoder: ChatEncoder,
    messages: list[dict[str, Any]],
    max_length: int,
    tools: list[dict] | None = None,
) -> Encoded | None:
    """Shorten a conversation to `max_length` tokens, at turn boundaries if it can (OLDEST_TURNS).

    Keeps the system prompt and the latest turns: drops the oldest exchanges (each starting at
    a user message) until the rest fits. If even the last exchange is too long, its tokens are
    cut at the end. Returns None when no reply token would be left to train.
    """
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user" and i > 0]
    for start in starts:
        shorter = encoder.encode(system + rest[start:], tools=tools)
        if len(shorter.input_ids) <= max_length and shorter.trained_tokens:
            return shorter
    last = encoder.encode(system + rest[starts[-1] :] if starts else messages, tools=tools)
    cut = Encoded(last.input_ids[:max_length], last.labels[:max_length])
    return cut if cut.trained_tokens else None


def cut_replies(replies: dict[str, list[int]], room: int) -> tuple[dict[str, list[int]], int, int]:
    """Each reply cut to `room` tokens (REPLY_END): the replies, tokens lost, and replies cut."""
    lost = sum(max(len(ids) - room, 0) for ids in replies.values())
    cut = sum(len(ids) > room for ids in replies.values())
    return {name: ids[:room] for name, ids in replies.items()}, lost, cut


def fits(lengths: list[int], max_length: int) -> bool:
    """Whether every sequence of an example fits (DROP skips the example otherwise)."""
    return max(lengths) <= max_length


def text_limit(
    tokenizer: PreTrainedTokenizerBase, max_length: int, model_config: Any = None
) -> int:
    """The length TEXT_END cuts at: `max_length`, capped by what the tokenizer and model allow."""
    positions = getattr(model_config, "max_position_embeddings", None)
    known = [
        limit
        for limit in (max_length, tokenizer.model_max_length, positions)
        if limit is not None and limit < NO_LIMIT
    ]
    return min(known)
