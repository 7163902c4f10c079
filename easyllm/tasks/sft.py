"""Supervised fine-tuning on conversations: train on assistant replies, never on prompts."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..data.collator import PaddingCollator
from ..data.encoding import IGNORE_INDEX, ChatEncoder, Encoded
from ..data.formats import Conversation, Message, column_format, convert_rows, key_format
from ..data.loading import Record, source_name
from ..data.split import train_val_split
from ..encoded_cache import Encoding, cached_encoding, encoder_fingerprint, encoding_key
from ..errors import DataError
from ..evaluation import Reference
from . import causal
from .base import DataOptions, DataReport, PreparedData, register_task

# Columns that let evaluate() generate from a row and score the reply (the validation split keeps them).
PROMPT_COLUMN, REFERENCE_COLUMN = "prompt_messages", "reference"


class SFTTask:
    """Conversations in, a chat model out: every assistant reply and its end-of-turn token trained."""

    name = "sft"
    peft_task_type = "CAUSAL_LM"
    uses_chat_template = True
    generative = True
    load_model = staticmethod(causal.load_model)
    build_trainer = staticmethod(causal.build_trainer)
    evaluate = staticmethod(causal.evaluate)

    def prepare(self, records: list[Record], encoder: ChatEncoder, options: DataOptions) -> PreparedData:
        row_format = None
        if options.columns:
            row_format = column_format(options.columns)
        elif options.input_key or options.output_key:
            row_format = key_format(options.input_key or "input", options.output_key or "output")
        converted = convert_rows(records, row_format, on_bad_rows=options.on_bad_rows)
        conversations = converted.conversations
        source = source_name(records[0].origin) if records else "data"
        report = DataReport(source, converted.rows, dict(Counter(c.format for c in conversations)))
        if converted.rejects:
            report.rejected = converted.summary()
        encoder = causal.apply_control_token_policy(conversations, encoder, options, report)
        encoder = dataclasses.replace(encoder, train_on=options.train_on)
        train_rows, val_rows = train_val_split(conversations, options.val_size, options.seed)
        fingerprint = encoder_fingerprint(encoder)
        train = self._encode(train_rows, encoder, fingerprint, options.max_length, report, options.keep_references)
        validation = (self._encode(val_rows, encoder, fingerprint, options.max_length, report, True)
                      if val_rows else None)
        if len(train) == 0:
            raise DataError(f"No trainable example is left in {source}:\n{report}")
        report.train_examples, report.val_examples = len(train), len(validation or [])
        return PreparedData(train, validation, report, options.max_length, converted.rejects)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> PaddingCollator:
        return PaddingCollator(tokenizer.pad_token_id)

    @staticmethod
    def references(dataset: Dataset, limit: int) -> list[Reference]:
        """The first `limit` rows' prompts and reference replies, for evaluate() to generate from."""
        if PROMPT_COLUMN not in dataset.column_names:
            return []
        rows = dataset.select(range(min(limit, len(dataset))))
        return [Reference(json.loads(prompt), reply)
                for prompt, reply in zip(rows[PROMPT_COLUMN], rows[REFERENCE_COLUMN], strict=True)]

    @staticmethod
    def _encode(
        conversations: list[Conversation], encoder: ChatEncoder, fingerprint: str, max_length: int,
        report: DataReport, keep_references: bool = False,
    ) -> Dataset:
        """Encoded rows (from the on-disk cache when this data was encoded before), counted in `report`.

        `fingerprint`: the encoder's `encoder_fingerprint`, computed once for both splits.
        """
        key = encoding_key(conversations, fingerprint, max_length=max_length, keep_references=keep_references)
        dataset, counts = cached_encoding(
            key, lambda: encode_conversations(conversations, encoder, max_length, keep_references))
        for name, value in counts.items():
            setattr(report, name, getattr(report, name) + value)
        return dataset


def encode_conversations(
    conversations: list[Conversation], encoder: ChatEncoder, max_length: int, keep_references: bool
) -> Encoding:
    """Token ids and labels per conversation, and what the data report counts about them."""
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    if keep_references:
        rows |= {PROMPT_COLUMN: [], REFERENCE_COLUMN: []}
    counts: dict[str, Any] = {"truncated": 0, "truncated_trained_tokens": 0, "dropped": [], "trained_tokens": 0,
                              "total_tokens": 0, "lengths": [], "unterminated_replies": 0}
    end_of_turn = set(encoder.end_of_turn_ids)
    for conversation in conversations:
        encoded = encoder.encode(conversation.messages, tools=conversation.tools)
        if len(encoded.input_ids) > max_length:
            counts["truncated"] += 1
            full_trained = encoded.trained_tokens
            encoded = fit_to_length(encoder, conversation.messages, max_length, tools=conversation.tools)
            counts["truncated_trained_tokens"] += full_trained - (encoded.trained_tokens if encoded else 0)
        if encoded is None or encoded.trained_tokens == 0:
            counts["dropped"].append(
                f"{conversation.origin}: no reply token left within max_length={max_length} "
                "(raise max_length or shorten the prompt)"
            )
            continue
        rows["input_ids"].append(encoded.input_ids)
        rows["labels"].append(encoded.labels)
        if keep_references:
            reference = split_last_reply(conversation.messages)
            rows[PROMPT_COLUMN].append(json.dumps(reference.prompt, ensure_ascii=False))
            rows[REFERENCE_COLUMN].append(reference.reply)
        counts["trained_tokens"] += encoded.trained_tokens
        counts["total_tokens"] += len(encoded.input_ids)
        counts["lengths"].append(len(encoded.input_ids))
        if encoder.train_on != "all":
            counts["unterminated_replies"] += count_unterminated_replies(encoded, end_of_turn)
    return rows, counts


def split_last_reply(messages: list[Message]) -> Reference:
    """Everything before the last assistant reply (the prompt) and that reply's text (the reference).

    >>> split_last_reply([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    Reference(prompt=[{'role': 'user', 'content': 'Hi'}], reply='Yo')
    """
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    reply = messages[last].get("content") if last < len(messages) else None
    return Reference(list(messages[:last]), reply if isinstance(reply, str) else "")


def fit_to_length(
    encoder: ChatEncoder, messages: list[Message], max_length: int, tools: list[dict] | None = None
) -> Encoded | None:
    """Shorten a conversation to `max_length` tokens, at turn boundaries where possible.

    Keeps the system prompt and the latest turns: drops the oldest exchanges (each starting at
    a user message) until the rest fits. If even the last exchange is too long, its tokens are
    cut at the end. Returns None when no reply token would be left to train.
    """
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user" and i > 0]
    for start in starts:
        shorter = encoder.encode(system + rest[start:], tools=tools)
        if len(shorter.input_ids) <= max_length and shorter.trained_tokens:
            return shorter
    last = encoder.encode(system + rest[starts[-1]:] if starts else messages, tools=tools)
    cut = Encoded(last.input_ids[:max_length], last.labels[:max_length])
    return cut if cut.trained_tokens else None


def count_unterminated_replies(encoded: Encoded, end_of_turn: set[int]) -> int:
    """Trained spans whose last token is not an end-of-turn token (the model would not learn to stop)."""
    count = 0
    for position, label in enumerate(encoded.labels):
        span_ends = label != IGNORE_INDEX and (
            position + 1 == len(encoded.labels) or encoded.labels[position + 1] == IGNORE_INDEX
        )
        if span_ends and encoded.input_ids[position] not in end_of_turn:
            count += 1
    return count


register_task("sft", SFTTask())
