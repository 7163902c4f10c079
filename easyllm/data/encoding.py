"""Render conversations with the chat template and decide, token by token, what is trained.

Where content lies: the template is rendered once with a placeholder for every message's
content and once with the real content; matching the two separates template markup from
content, as the template shows it (templates may trim it). Markup keeps its control tokens;
content is plain text, so a string such as "<|im_end|>" inside a message stays text and can
never forge a turn. Text between control tokens is tokenized in one go, as the tokenizer does
for the whole text, so clean conversations get exactly `apply_chat_template`'s ids.

What is trained: for each reply, everything the model must produce after the prompt that
`encode_prompt` (and so `generate()`) gives it -- the conversation so far plus the template's
generation prompt -- up to and including the first control token after the reply (its end of
turn). Text a template adds to a reply (Qwen3's empty `<think>` block, a tool call, Llama 2's
leading space) is therefore learnt, and a prompt is token for token the prefix trained on.

Limits, both explained when met: a template that renders past replies unlike a prompt (Qwen3.5
without thinking; templates that move the system prompt to the last user turn) has those
earlier replies trained from their content on, so only the last reply's prompt is an exact
prefix; and a template that changes content beyond trimming it (Qwen3 moving "<think>" out of a
reply) is refused with a ConfigError that says what to do instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from .formats import Message

IGNORE_INDEX = -100
TrainOn = Literal["assistant", "last_assistant", "all"]
TRAIN_ON: tuple[str, ...] = get_args(TrainOn)
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
_ANCHOR = "\n"  # put before text so that it tokenizes as it would after a control token
Tools = list[dict[str, Any]] | None


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
class _Layout:
    """A rendered conversation: its pieces, token ids and the character where each token starts."""

    pieces: list[_Piece]
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


@dataclass
class ChatEncoder:
    """Turns conversations into token ids and labels with one chat template.

    `train_on`: "assistant" trains every reply, "last_assistant" only the final one (history is
    context), "all" every token (like pre-training). `content_as_text=False` lets special-token
    strings inside messages become control tokens (only for data that means it, e.g. tool markup).

    >>> encoder = ChatEncoder(tokenizer)  # doctest: +SKIP
    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    >>> tokenizer.decode([t for t, l in zip(*vars(encoder.encode(chat)).values()) if l != -100])  # doctest: +SKIP
    'Yo<|im_end|>'
    """

    tokenizer: PreTrainedTokenizerBase
    chat_template: str | None = None
    train_on: TrainOn = "assistant"
    content_as_text: bool = True
    _special_ids: set[int] = field(init=False, repr=False)
    _anchor_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"train_on={self.train_on!r}: choose one of {', '.join(TRAIN_ON)}")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(
                f"{type(self.tokenizer).__name__} is not backed by the `tokenizers` library; easyllm needs "
                "one (it maps tokens to characters to tell a reply from its prompt). Use a model that "
                "ships a tokenizer.json."
            )
        self.chat_template = self.chat_template or self.tokenizer.chat_template
        if not self.chat_template:
            raise ConfigError(
                "The tokenizer has no chat template. Pass template=<a registered name such as "
                "'chatml' or 'plain', or a Jinja chat template> to ModelRunner, or use a chat model."
            )
        self._special_ids = set(self.tokenizer.all_special_ids) | {
            token_id
            for token_id, token in self.tokenizer.added_tokens_decoder.items()
            if token.special
        }
        self._anchor_ids = self._find_anchor()

    # -- public ------------------------------------------------------------------------------
    def encode(self, messages: list[Message], tools: Tools = None) -> Encoded:
        """Token ids of the whole conversation; labels train every assistant turn and its end."""
        layout = self._layout(messages, tools, add_generation_prompt=False)
        if self.train_on == "all":
            return Encoded(layout.ids, list(layout.ids))
        labels = [IGNORE_INDEX] * len(layout.ids)
        for index in sorted(self._trained_messages(messages)):
            first, closing = self._reply_tokens(messages, tools, index, layout)
            for position in range(first, closing + 1):
                labels[position] = layout.ids[position]
        return Encoded(layout.ids, labels)

    def encode_prompt(self, messages: list[Message], tools: Tools = None) -> list[int]:
        """Token ids of `messages` followed by the template's generation prompt."""
        return self._layout(messages, tools, add_generation_prompt=True).ids

    def render(
        self, messages: list[Message], add_generation_prompt: bool = False, tools: Tools = None
    ) -> str:
        """The template's text for `messages` (what a human would read)."""
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    @property
    def end_of_turn_ids(self) -> list[int]:
        """Tokens that end an assistant turn (used to stop generation), plus the EOS token."""
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        layout = self._layout(probe, None, add_generation_prompt=False)
        _, closing = self._reply_tokens(probe, None, 1, layout)
        eos = self.tokenizer.eos_token_id
        return list(dict.fromkeys([layout.ids[closing]] + ([eos] if eos is not None else [])))

    # -- which tokens a reply owns -----------------------------------------------------------
    def _trained_messages(self, messages: list[Message]) -> set[int]:
        replies = [
            i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("train", True)
        ]
        if self.train_on == "last_assistant":
            last = max(
                (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None
            )
            return {last} & set(replies)
        return set(replies)

    def _reply_tokens(
        self, messages: list[Message], tools: Tools, index: int, layout: _Layout
    ) -> tuple[int, int]:
        """First and last token of reply `index`: from the end of its prompt to its end of turn."""
        spans = layout.content_spans()
        own = next(((start, end) for message, start, end in spans if message == index), None)
        begin = self._prompt_end(messages, tools, index, layout.text, own)
        after = own[1] if own else begin
        limit = min(
            (start for message, start, _ in spans if message != index and start >= after),
            default=None,
        )
        limit = len(layout.text) if limit is None else limit
        first = next(
            (i for i, start in enumerate(layout.starts) if start >= begin), len(layout.starts)
        )
        for position in range(first, len(layout.ids)):
            start = layout.starts[position]
            if start >= limit:
                break
            if start >= after and layout.ids[position] in self._special_ids:
                return first, position
        raise ConfigError(
            "The chat template does not end an assistant turn with a special token (such as EOS), "
            "so the model would never learn to stop. Use a template that closes each reply with "
            f"the tokenizer's end-of-turn or EOS token ({self.tokenizer.eos_token!r}), e.g. template='plain'."
        )

    def _prompt_end(
        self,
        messages: list[Message],
        tools: Tools,
        index: int,
        text: str,
        own: tuple[int, int] | None,
    ) -> int:
        """Where the generation prompt for reply `index` ends in `text` (else where its content starts)."""
        try:
            prompt = (
                self.render(messages[:index], add_generation_prompt=True, tools=tools)
                if index
                else None
            )
        except TemplateError:  # e.g. a template that wants the conversation to end with a user turn
            prompt = None
        if (
            prompt is not None
            and text.startswith(prompt)
            and (own is None or len(prompt) <= own[0])
        ):
            return len(prompt)
        if own is not None:  # the template renders history unlike prompts: train the content on
            return own[0]
        raise ConfigError(
            f"The chat template renders message {index + 1} (assistant) with no content and its prompt "
            "is not a prefix of the conversation, so easyllm cannot tell which tokens to train. "
            "Give the message content or pass a different template=..."
        )

    # -- rendering ---------------------------------------------------------------------------
    def _layout(
        self, messages: list[Message], tools: Tools, add_generation_prompt: bool
    ) -> _Layout:
        pieces = self._pieces(messages, tools, add_generation_prompt)
        ids, starts = self._tokenize(pieces)
        return _Layout(pieces, ids, starts)

    def _pieces(
        self, messages: list[Message], tools: Tools, add_generation_prompt: bool
    ) -> list[_Piece]:
        """The rendered text cut into markup and content, each content as the template shows it."""
        # Empty content gets no placeholder: templates test it ("{% if message.content %}").
        marked = [
            {**m, "content": _PLACEHOLDER.format(i)}
            if isinstance(m.get("content"), str) and m["content"]
            else m
            for i, m in enumerate(messages)
        ]
        parts = _PLACEHOLDER_RE.split(self.render(marked, add_generation_prompt, tools))
        markup, order = parts[0::2], [int(index) for index in parts[1::2]]
        replies = [
            i for i, m in enumerate(messages) if m["role"] == "assistant" and m is not marked[i]
        ]
        missing = [i for i in replies if i not in order]
        if missing or order != sorted(order):
            raise ConfigError(
                "The chat template does not render every assistant message once and in order "
                f"(assistant messages missing: {missing}); easyllm cannot tell which tokens to train. "
                "Pass a different template=..."
            )
        return self._align(
            self.render(messages, add_generation_prompt, tools), markup, order, messages
        )

    @staticmethod
    def _align(
        text: str, markup: list[str], order: list[int], messages: list[Message]
    ) -> list[_Piece]:
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
            pieces += [_Piece(before, None), _Piece(shown, index)]
            position += len(shown)
        if text[position:] != markup[-1]:
            raise _unfollowable(messages, order[-1] if order else None)
        pieces.append(_Piece(markup[-1], None))
        return [piece for piece in pieces if piece.text or piece.message is not None]

    # -- tokenizing --------------------------------------------------------------------------
    def _tokenize(self, pieces: list[_Piece]) -> tuple[list[int], list[int]]:
        """Ids of the pieces, and where each token starts in their text.

        Markup is cut at its control tokens; the text between two control tokens (markup and
        content alike) is tokenized as one string with control-token strings kept as text.
        Each of the two steps is one batched tokenizer call.
        """
        as_text = [piece.message is not None and self.content_as_text for piece in pieces]
        cuts = iter(self._split_markup([p.text for p, text in zip(pieces, as_text) if not text]))
        segments: list[tuple[int, str, int | None]] = []  # (start, text, control token id or None)
        position = 0
        for piece, text_only in zip(pieces, as_text):
            for text, special in [(piece.text, None)] if text_only else next(cuts):
                if special is None and segments and segments[-1][2] is None:
                    start, previous, _ = segments[-1]
                    segments[-1] = (start, previous + text, None)
                else:
                    segments.append((position, text, special))
                position += len(text)
        texts = [(start, text) for start, text, special in segments if special is None]
        encoded = iter(
            self._encode_texts([text for _, text in texts], [start > 0 for start, _ in texts])
        )
        ids: list[int] = []
        starts: list[int] = []
        for start, _, special in segments:
            if special is not None:
                ids.append(special)
                starts.append(start)
                continue
            text_ids, offsets = next(encoded)
            ids += text_ids
            starts += [start + offset for offset in offsets]
        return ids, starts

    def _split_markup(self, texts: list[str]) -> list[list[tuple[str, int | None]]]:
        """Each markup cut into plain text and control tokens, where the tokenizer finds them."""
        if not texts:
            return []
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        cuts = []
        for text, ids, offsets in zip(texts, batch["input_ids"], batch["offset_mapping"]):
            parts: list[tuple[str, int | None]] = []
            position = 0
            for token, (start, end) in zip(ids, offsets):
                if token in self._special_ids:  # its span includes any whitespace it strips
                    if start > position:
                        parts.append((text[position:start], None))
                    parts.append((text[start:end], token))
                    position = end
            if position < len(text):
                parts.append((text[position:], None))
            cuts.append(parts)
        return cuts

    def _encode_texts(
        self, texts: list[str], after_control: list[bool]
    ) -> list[tuple[list[int], list[int]]]:
        """Plain-text ids of each text (control-token strings stay text) and where each token starts."""
        if not texts:
            return []
        anchors = [_ANCHOR if after and self._anchor_ids else "" for after in after_control]
        batch = self.tokenizer(
            [anchor + text for anchor, text in zip(anchors, texts)],
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
        )
        results = []
        for text, anchor, ids, offsets in zip(
            texts, anchors, batch["input_ids"], batch["offset_mapping"]
        ):
            skip = len(self._anchor_ids) if anchor else 0
            if (
                anchor and ids[:skip] != self._anchor_ids
            ):  # the anchor merged with the text: go without
                results += self._encode_texts([text], [False])
                continue
            results.append(
                (ids[skip:], [max(start - len(anchor), 0) for start, _ in offsets[skip:]])
            )
        return results

    def _find_anchor(self) -> list[int]:
        """Ids of `_ANCHOR` when text after a control token must be tokenized behind it, else [].

        Sentencepiece-style tokenizers (Metaspace, prepend_scheme="first") put "▁" before a
        string's first word but not after a control token; tokenized alone, every piece after
        one would gain a space. Behind a newline whose tokens are then dropped, it does not.
        """
        control = self.tokenizer.eos_token or next(iter(self.tokenizer.all_special_tokens), None)
        if control is None:
            return []
        probe = "Hi there"
        after = self.tokenizer(control + probe, add_special_tokens=False)["input_ids"]
        alone = self._plain_ids(probe)
        if after[:1] != [self.tokenizer.convert_tokens_to_ids(control)] or after[1:] == alone:
            return []
        anchor_ids = self._plain_ids(_ANCHOR)
        behind = self._plain_ids(_ANCHOR + probe)
        return anchor_ids if behind == anchor_ids + after[1:] else []

    def _plain_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]


def _fits(text: str, position: int, shown: str, after: str, last: bool) -> bool:
    """Whether `shown` followed by the markup `after` is what `text` holds at `position`."""
    if last:
        return text[position:] == shown + after
    return text.startswith(shown + after, position)


def _unfollowable(messages: list[Message], index: int | None) -> ConfigError:
    where = (
        f"message {index + 1} ({messages[index]['role']})"
        if index is not None
        else "the conversation"
    )
    return ConfigError(
        f"The chat template renders {where} differently from its content (more than trimming it), "
        "so easyllm cannot tell which tokens belong to it. Qwen3-style templates, for example, move "
        "'<think>...</think>' out of a reply: put reasoning in the message's 'reasoning_content' "
        "instead. Otherwise pass a different template=..."
    )
