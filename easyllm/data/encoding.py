"""Render conversations with the chat template and decide, token by token, what is trained.

The template is rendered once with a placeholder in place of every message's content. The
placeholders split the text into template markup and content pieces. Markup is tokenized
normally (its control tokens are real); content is tokenized as plain text, so a string such
as "<|im_end|>" inside a message stays text and can never forge a turn. Labels follow from
the pieces: an assistant's content is trained, and so is the markup that closes its turn up
to and including the first special token (the end-of-turn token), so the model learns to
stop. `generate()` builds its prompt from the same pieces, so a prompt is token for token
the prefix the model was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from .formats import Message

IGNORE_INDEX = -100
TrainOn = Literal["assistant", "last_assistant", "all"]
TRAIN_ON: tuple[str, ...] = get_args(TrainOn)
_PLACEHOLDER = "\ue000{}\ue001"  # private-use code points: never produced by a template
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class _Piece:
    text: str
    message: int | None  # index of the message whose content this is; None for markup


@dataclass
class ChatEncoder:
    """Turns conversations into token ids and labels with one chat template.

    `train_on`: "assistant" trains every reply, "last_assistant" only the final one (history is
    context), "all" every token (like pre-training). `content_as_text=False` lets special-token
    strings inside messages become control tokens (only for data that means it, e.g. tool markup).
    """

    tokenizer: PreTrainedTokenizerBase
    chat_template: str | None = None
    train_on: TrainOn = "assistant"
    content_as_text: bool = True
    _special_ids: set[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"train_on={self.train_on!r}: choose one of {', '.join(TRAIN_ON)}")
        self.chat_template = self.chat_template or self.tokenizer.chat_template
        if not self.chat_template:
            raise ConfigError(
                "The tokenizer has no chat template. Pass template=<a Jinja chat template string> "
                "to ModelRunner, or use a chat/instruct model."
            )
        self._special_ids = set(self.tokenizer.all_special_ids) | {
            token_id for token_id, token in self.tokenizer.added_tokens_decoder.items() if token.special
        }

    # -- public ------------------------------------------------------------------------------
    def encode(self, messages: list[Message]) -> Encoded:
        """Token ids of the whole conversation; labels train every assistant turn and its end."""
        pieces = self._pieces(messages, add_generation_prompt=False)
        if self.train_on == "all":
            input_ids = [token for piece in pieces for token in self._tokenize(piece)]
            return Encoded(input_ids, list(input_ids))
        trained = self._trained_messages(messages)
        input_ids: list[int] = []
        labels: list[int] = []
        trained_turn_open = False
        for piece in pieces:
            ids = self._tokenize(piece)
            if piece.message is not None:
                trained_turn_open = piece.message in trained
                labels += ids if trained_turn_open else [IGNORE_INDEX] * len(ids)
            elif trained_turn_open:
                closing = self._closing_length(ids)
                labels += ids[:closing] + [IGNORE_INDEX] * (len(ids) - closing)
                trained_turn_open = False
            else:
                labels += [IGNORE_INDEX] * len(ids)
            input_ids += ids
        if trained_turn_open:  # the text ended right after a reply: nothing closes the turn
            self._closing_length([])
        return Encoded(input_ids, labels)

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Token ids of `messages` followed by the template's generation prompt."""
        pieces = self._pieces(messages, add_generation_prompt=True)
        return [token for piece in pieces for token in self._tokenize(piece)]

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The template's text for `messages` (what a human would read)."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    @property
    def end_of_turn_ids(self) -> list[int]:
        """Tokens that end an assistant turn (used to stop generation), plus the EOS token."""
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        pieces = self._pieces(probe, add_generation_prompt=False)
        after_reply = next((p for i, p in enumerate(pieces) if i and pieces[i - 1].message == 1), None)
        ids = self._tokenize(after_reply) if after_reply else []
        closing = ids[: self._closing_length(ids)] if ids else []
        found = [token for token in closing if token in self._special_ids]
        eos = self.tokenizer.eos_token_id
        return list(dict.fromkeys(found + ([eos] if eos is not None else [])))

    # -- internals ---------------------------------------------------------------------------
    def _trained_messages(self, messages: list[Message]) -> set[int]:
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("train", True)]
        if self.train_on == "last_assistant":
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            return {last} & set(replies)
        return set(replies)

    def _pieces(self, messages: list[Message], add_generation_prompt: bool) -> list[_Piece]:
        placeholders = [{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)]
        text = self.render(placeholders, add_generation_prompt)
        pieces: list[_Piece] = []
        position, seen = 0, []
        for match in _PLACEHOLDER_RE.finditer(text):
            index = int(match.group(1))
            pieces.append(_Piece(text[position : match.start()], None))
            pieces.append(_Piece(messages[index]["content"], index))
            seen.append(index)
            position = match.end()
        pieces.append(_Piece(text[position:], None))
        missing = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i not in seen]
        if missing or seen != sorted(seen):
            raise ConfigError(
                "The chat template does not render every assistant message once and in order "
                f"(assistant messages missing: {missing}); easyllm cannot tell which tokens to train. "
                "Pass a different template=..."
            )
        return [piece for piece in pieces if piece.text]

    def _tokenize(self, piece: _Piece) -> list[int]:
        as_text = piece.message is not None and self.content_as_text  # content stays text
        return self.tokenizer(piece.text, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]

    def _closing_length(self, markup_ids: list[int]) -> int:
        """How many leading tokens of the markup after a reply close that turn."""
        for position, token in enumerate(markup_ids):
            if token in self._special_ids:
                return position + 1
        raise ConfigError(
            "The chat template does not end an assistant turn with a special token (such as EOS), "
            "so the model would never learn to stop. Use a template that closes each reply with "
            f"the tokenizer's end-of-turn or EOS token ({self.tokenizer.eos_token!r})."
        )
