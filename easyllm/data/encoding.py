"""Render conversations with the chat template and decide, token by token, what is trained.

Where content lies: the template is rendered once with a placeholder for every message's
content and once with the real content; matching the two separates template markup from
content, as the template shows it (templates may trim it; see pieces.py). Markup keeps its
control tokens; content is plain text, so a string such as "<|im_end|>" inside a message stays
text and can never forge a turn. Text between control tokens is tokenized in one go, as the
tokenizer does for the whole text, so clean conversations get exactly `apply_chat_template`'s
ids (see tokenizing.py).

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

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from .conversation import Message
from .pieces import Layout, align, markup_and_order, with_placeholders
from .tokenizing import PieceTokenizer

IGNORE_INDEX = -100
TrainOn = Literal["assistant", "last_assistant", "all"]
TRAIN_ON: tuple[str, ...] = get_args(TrainOn)
Tools = list[dict[str, Any]] | None


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class ChatEncoder:
    """Turns conversations into token ids and labels with one chat template.

    `train_on`: "assistant" trains every reply, "last_assistant" only the final one (history is
    context), "all" every token (like pre-training). `content_as_text=False` lets special-token
    strings inside messages become control tokens (only for data that means it, e.g. tool markup).

    >>> encoder = ChatEncoder(tokenizer)  # doctest: +SKIP
    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    >>> encoded = encoder.encode(chat)  # doctest: +SKIP
    >>> pairs = zip(encoded.input_ids, encoded.labels)  # doctest: +SKIP
    >>> tokenizer.decode([token for token, label in pairs if label != -100])  # doctest: +SKIP
    'Yo<|im_end|>'
    """

    tokenizer: PreTrainedTokenizerBase
    chat_template: str | None = None
    train_on: TrainOn = "assistant"
    content_as_text: bool = True
    _tokens: PieceTokenizer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"train_on={self.train_on!r}: choose one of {', '.join(TRAIN_ON)}")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(
                f"{type(self.tokenizer).__name__} is not backed by the `tokenizers` library; "
                "easyllm needs one (it maps tokens to characters to tell a reply from its prompt). "
                "Use a model that ships a tokenizer.json."
            )
        self.chat_template = self.chat_template or self.tokenizer.chat_template
        if not self.chat_template:
            raise ConfigError(
                "The tokenizer has no chat template. Pass template=<a registered name such as "
                "'chatml' or 'plain', or a Jinja chat template> to ModelRunner, or use a chat "
                "model."
            )
        self._tokens = PieceTokenizer(self.tokenizer)

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
        self, messages: list[Message], tools: Tools, index: int, layout: Layout
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
            if start >= after and layout.ids[position] in self._tokens.special_ids:
                return first, position
        raise ConfigError(
            "The chat template does not end an assistant turn with a special token (such as "
            "EOS), so the model would never learn to stop. Use a template that closes each reply "
            f"with the tokenizer's end-of-turn or EOS token ({self.tokenizer.eos_token!r}), e.g. "
            "template='plain'."
        )

    def _prompt_end(
        self,
        messages: list[Message],
        tools: Tools,
        index: int,
        text: str,
        own: tuple[int, int] | None,
    ) -> int:
        """Where reply `index`'s prompt ends in `text` (else where its content starts)."""
        prompt = self._generation_prompt(messages[:index], tools) if index else None
        if (
            prompt is not None
            and text.startswith(prompt)
            and (own is None or len(prompt) <= own[0])
        ):
            return len(prompt)
        if own is not None:  # the template renders history unlike prompts: train the content on
            return own[0]
        raise ConfigError(
            f"The chat template renders message {index + 1} (assistant) with no content and its "
            "prompt is not a prefix of the conversation, so easyllm cannot tell which tokens to "
            "train. Give the message content or pass a different template=..."
        )

    def _generation_prompt(self, history: list[Message], tools: Tools) -> str | None:
        """`history` rendered as a prompt, or None where the template refuses to."""
        try:
            return self.render(history, add_generation_prompt=True, tools=tools)
        except TemplateError:  # e.g. a template that wants the conversation to end with a user turn
            return None

    # -- rendering ---------------------------------------------------------------------------
    def _layout(self, messages: list[Message], tools: Tools, add_generation_prompt: bool) -> Layout:
        """The conversation as the template renders it, cut into markup and content, tokenized."""
        marked = self.render(with_placeholders(messages), add_generation_prompt, tools)
        markup, order = markup_and_order(marked, messages)
        text = self.render(messages, add_generation_prompt, tools)
        pieces = align(text, markup, order, messages)
        return Layout(pieces, *self._tokens.tokenize(pieces, self.content_as_text))
