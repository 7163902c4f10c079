"""The one conversation schema every row shape is normalized to, and what makes one trainable.

A conversation is a list of messages `{"role": ..., "content": ...}` with roles system, user,
assistant and tool, plus an optional `tools` list (the tool definitions the assistant may call).
A message may carry `"train": False` to keep an assistant turn untrained.
Problems name a message by its position in the conversation, counting from 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .rows import RowProblem

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Conversation:
    messages: list[Message]
    origin: str
    format: str
    tools: list[dict[str, Any]] | None = None


def clean_message(message: Any, n: int) -> Message:
    """Message `n` with text content (OpenAI-style text parts joined), or RowProblem."""
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise RowProblem(
            "missing role or content",
            f"message {n} needs 'role' and 'content', "
            f"got {str(message)[:80]}; add them or drop the row",
        )
    content = message["content"]
    if isinstance(content, list):  # OpenAI-style content parts
        other = [p for p in content if not (isinstance(p, Mapping) and p.get("type") == "text")]
        if other:
            raise RowProblem(
                "non-text content",
                f"message {n} ({message['role']}) has a non-text "
                f"part {str(other[0])[:60]}; only {{'type': 'text', 'text': ...}} "
                "parts can be trained: drop the others or the row",
            )
        content = "".join(str(part.get("text", "")) for part in content)
    return {**message, "content": content}


# Which roles may come right before each role (None: the start of the conversation).
_MAY_FOLLOW: dict[str, set[str | None]] = {
    "system": {None},
    "user": {None, "system", "assistant", "tool"},
    "assistant": {None, "system", "user", "tool"},
    "tool": {"assistant", "tool"},
}
_ORDER_FIX = {
    "system": "only the first message may be a system message",
    "user": "merge the two user messages or put the assistant reply between them",
    "assistant": "merge the two replies or put the user message between them",
    "tool": "a tool result must follow the assistant message that called the tool",
}


def validate_conversation(messages: list[Message]) -> None:
    """Raise RowProblem naming the first thing that makes `messages` untrainable."""
    if not messages:
        raise RowProblem(
            "empty conversation", "the conversation has no messages; add some or drop the row"
        )
    previous: str | None = None
    for n, message in enumerate(messages, 1):
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RowProblem(
                "unknown role",
                f"message {n} has unknown role {role!r}; use one of {', '.join(ROLES)}",
            )
        blank = isinstance(content, str) and not content.strip() and role != "system"
        if content is None or blank:
            raise RowProblem(
                "empty message", f"message {n} ({role}) is empty; write its text or drop the row"
            )
        if not isinstance(content, str):
            raise RowProblem(
                "non-text content",
                f"message {n} ({role}) content must be text, got "
                f"{type(content).__name__}; convert it to a string or drop the row",
            )
        if previous not in _MAY_FOLLOW[role]:
            raise RowProblem(
                "roles out of order",
                f"roles out of order: message {n} ({role}) "
                f"{_position(role, previous)}; {_ORDER_FIX[role]}",
            )
        previous = role
    if previous != "assistant":
        raise RowProblem(
            "no final reply",
            "the conversation must end with an assistant reply to "
            f"learn from, but message {len(messages)} is {_a(previous)} message; add "
            "the reply or drop the row",
        )


def _a(word: str | None) -> str:
    return f"{'an' if word == 'assistant' else 'a'} {word}"


def _position(role: str, previous: str | None) -> str:
    if previous is None:
        return "comes first"
    if previous == role:
        return f"follows another {role} message"
    return f"follows {_a(previous)} message"
