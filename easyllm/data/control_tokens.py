"""Find text that looks like a tokenizer's control tokens inside message content.

Scraped chats, code and docs about tokenizers contain strings such as "<|im_end|>". easyllm
tokenizes message content as text, so they never become control tokens; this module lets the
data report count such rows, and lets a user reject them instead.
"""

from __future__ import annotations

from typing import Literal, get_args

from transformers import PreTrainedTokenizerBase

from .conversation import Message

ControlTokenPolicy = Literal["text", "reject", "allow"]
CONTROL_TOKEN_POLICIES: tuple[str, ...] = get_args(ControlTokenPolicy)


def control_token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every special token string of the tokenizer, longest first."""
    strings = set(tokenizer.all_special_tokens) | {
        token.content for token in tokenizer.added_tokens_decoder.values() if token.special
    }
    return sorted((s for s in strings if s), key=len, reverse=True)


def find_control_token(messages: list[Message], strings: list[str]) -> str | None:
    """A description of the first control-token string found in any message's content, or None."""
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, str):
            continue
        for token in strings:
            if token in content:
                return f"message {index} ({message['role']}) contains {token!r}"
    return None
