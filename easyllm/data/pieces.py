"""Where each message's content lies in a conversation the chat template rendered.

The template is rendered once with a placeholder for every message's content and once with the
real content; matching the two separates template markup from content, as the template shows
it (templates may trim it). `ChatEncoder` renders; this module only reads the two texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .conversation import Message

_PLACEHOLDER = "\ue000{}\ue001"  # private-use code points: never produced by a template
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")
# How templates may show a content: as is, or trimmed (`| trim` in Llama 3 and Gemma,
# `.strip()` in Llama 2, `.lstrip('\n')` in Qwen3). Tried in this order.
_SHOWN_AS: tuple[Callable[[str], str], ...] = (
    str,
    str.strip,
    str.lstrip,
    str.rstrip,
    lambda s: s.strip("\n"),
    lambda s: s.lstrip("\n"),
    lambda s: s.rstrip("\n"),
)


@dataclass
class Piece:
    text: str
    message: int | None  # index of the message whose content this is; None for markup


@dataclass
class Layout:
    """A rendered conversation: its pieces, token ids and the character where each token starts."""

    pieces: list[Piece]
    ids: list[int]
    starts: list[int]

    @property
    def text(self) -> str:
        return "".join(piece.text for piece in self.pieces)

    def content_spans(self) -> list[tuple[int, int, int]]:
        """(message, start, end) of every content piece, in text order."""
        spans, position = [], 0
        for piece in self.pieces:
            if piece.message is not None:
                spans.append((piece.message, position, position + len(piece.text)))
            position += len(piece.text)
        return spans


def with_placeholders(messages: list[Message]) -> list[Message]:
    """`messages` with each content replaced by a numbered placeholder, to render instead."""
    # Empty content gets no placeholder: templates test it ("{% if message.content %}").
    return [
        {**m, "content": _PLACEHOLDER.format(i)} if _has_placeholder(m) else m
        for i, m in enumerate(messages)
    ]


def markup_and_order(marked: str, messages: list[Message]) -> tuple[list[str], list[int]]:
    """The markup around the placeholders of the rendered `marked`, and their message indices.

    Raises ConfigError when the template does not show every reply once and in order.
    """
    parts = _PLACEHOLDER_RE.split(marked)
    markup, order = parts[0::2], [int(index) for index in parts[1::2]]
    replies = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and _has_placeholder(m)
    ]
    missing = [i for i in replies if i not in order]
    if missing or order != sorted(order):
        raise ConfigError(
            "The chat template does not render every assistant message once and in order "
            f"(assistant messages missing: {missing}); easyllm cannot tell which tokens to "
            "train. Pass a different template=..."
        )
    return markup, order


def align(text: str, markup: list[str], order: list[int], messages: list[Message]) -> list[Piece]:
    """Find each content in the real `text` between the markup the placeholders revealed."""
    pieces, position = [], 0
    for number, index in enumerate(order):
        before, after, last = markup[number], markup[number + 1], number == len(order) - 1
        shown = None
        if text.startswith(before, position):
            position += len(before)
            candidates = (variant(messages[index]["content"]) for variant in _SHOWN_AS)
            shown = next((c for c in candidates if _fits(text, position, c, after, last)), None)
        if shown is None:
            raise _unfollowable(messages, index)
        pieces += [Piece(before, None), Piece(shown, index)]
        position += len(shown)
    if text[position:] != markup[-1]:
        raise _unfollowable(messages, order[-1] if order else None)
    pieces.append(Piece(markup[-1], None))
    return [piece for piece in pieces if piece.text or piece.message is not None]


def _has_placeholder(message: Message) -> bool:
    return isinstance(message.get("content"), str) and bool(message["content"])


def _fits(text: str, position: int, shown: str, after: str, last: bool) -> bool:
    """Whether `shown` followed by the markup `after` is what `text` holds at `position`."""
    if last:
        return text[position:] == shown + after
    return text.startswith(shown + after, position)


def _unfollowable(messages: list[Message], index: int | None) -> ConfigError:
    if index is None:
        where = "the conversation"
    else:
        where = f"message {index + 1} ({messages[index]['role']})"
    return ConfigError(
        f"The chat template renders {where} differently from its content "
        "(more than trimming it), so easyllm cannot tell which tokens belong to it. Qwen3-style "
        "templates, for example, move '<think>...</think>' out of a reply: put reasoning in the "
        "message's 'reasoning_content' instead. Otherwise pass a different template=..."
    )
