"""Supervised fine-tuning on conversations: train on assistant replies, never on prompts."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..data.encoded_cache import Encoding, cached_encoding, encoder_fingerprint, encoding_key
from ..data.encoding import IGNORE_INDEX, ChatEncoder, Encoded
from ..data.formats import Conversation, Message, RowFormat, column_format, convert_rows, key_format
from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.truncation import Truncation, fit_conversation
from ..eval.evaluation import Reference
from . import causal
from .base import Capabilities, finish_prepared, register_task, split_rows

# Columns that let evaluate() generate from a row and score the reply (validation rows keep them).
PROMPT_COLUMN, REFERENCE_COLUMN = "prompt_messages", "reference"


class SFTTask:
    """Conversations in, a chat model out: each assistant reply and its end-of-turn are trained."""

    name = "sft"
    capabilities = Capabilities(references=True, previews=True, truncation=Truncation.OLDEST_TURNS)
    load_model = staticmethod(causal.load_model)
    build_trainer = staticmethod(causal.build_trainer)
    evaluate = staticmethod(causal.evaluate)
    preview_ids = staticmethod(causal.preview_ids)

    def prepare(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder,
        options: DataOptions,
    ) -> PreparedData:
        parsed = convert_rows(records, sft_row_format(options), on_bad_rows=options.on_bad_rows)
        conversations = parsed.rows
        report = DataReport.of(parsed, dict(Counter(c.format for c in conversations)))
        encoder = causal.apply_control_token_policy(conversations, encoder, options, report)
        encoder = dataclasses.replace(encoder, train_on=options.train_on)
        train_rows, val_rows = split_rows(conversations, options)
        fingerprint = encoder_fingerprint(encoder)
        train = self._encode(
            train_rows, encoder, fingerprint, options.max_length, report, options.keep_references
        )
        validation = (
            self._encode(val_rows, encoder, fingerprint, options.max_length, report, True)
            if val_rows
            else None
        )
        return finish_prepared(
            train,
            validation,
            report,
            options,
            parsed.rejects,
            longest_example=max(map(len, train["input_ids"]), default=0),  # train split only
        )

    @staticmethod
    def references(dataset: Dataset, limit: int) -> list[Reference]:
        """The first `limit` rows' prompts and reference replies, which evaluate() answers."""
        if PROMPT_COLUMN not in dataset.column_names:
            return []
        rows = dataset.select(range(min(limit, len(dataset))))
        return [
            Reference(json.loads(prompt), reply)
            for prompt, reply in zip(rows[PROMPT_COLUMN], rows[REFERENCE_COLUMN], strict=True)
        ]

    @staticmethod
    def _encode(
        conversations: list[Conversation],
        encoder: ChatEncoder,
        fingerprint: str,
        max_length: int,
        report: DataReport,
        keep_references: bool = False,
    ) -> Dataset:
        """Encoded rows (from the disk cache if this data was encoded before), counted in `report`.

        `fingerprint`: the encoder's `encoder_fingerprint`, computed once for both splits.
        """
        key = encoding_key(
            conversations, fingerprint, max_length=max_length, keep_references=keep_references
        )
        dataset, counts = cached_encoding(
            key, lambda: encode_conversations(conversations, encoder, max_length, keep_references)
        )
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
    counts: dict[str, Any] = {
        "truncated": 0,
        "truncated_trained_tokens": 0,
        "dropped": [],
        "trained_tokens": 0,
        "total_tokens": 0,
        "lengths": [],
        "unterminated_replies": 0,
    }
    end_of_turn = set(encoder.end_of_turn_ids)
    for conversation in conversations:
        encoded = encoder.encode(conversation.messages, tools=conversation.tools)
        if len(encoded.input_ids) > max_length:
            counts["truncated"] += 1
            full_trained = encoded.trained_tokens
            encoded = fit_conversation(
                encoder, conversation.messages, max_length, tools=conversation.tools
            )
            kept = encoded.trained_tokens if encoded else 0
            counts["truncated_trained_tokens"] += full_trained - kept
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
    """Everything before the last assistant reply (the prompt) and its text (the reference).

    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    >>> split_last_reply(chat)
    Reference(prompt=[{'role': 'user', 'content': 'Hi'}], reply='Yo')
    """
    last = max(
        (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages)
    )
    reply = messages[last].get("content") if last < len(messages) else None
    return Reference(list(messages[:last]), reply if isinstance(reply, str) else "")


def sft_row_format(options: DataOptions) -> RowFormat | None:
    """The row shape the options name (columns=, or input_key/output_key); None: detect per row."""
    if options.columns:
        return column_format(options.columns)
    if options.input_key or options.output_key:
        return key_format(options.input_key or "input", options.output_key or "output")
    return None


def count_unterminated_replies(encoded: Encoded, end_of_turn: set[int]) -> int:
    """Trained spans whose last token is not an end-of-turn token (it would not learn to stop)."""
    count = 0
    for position, label in enumerate(encoded.labels):
        span_ends = label != IGNORE_INDEX and (
            position + 1 == len(encoded.labels) or encoded.labels[position + 1] == IGNORE_INDEX
        )
        if span_ends and encoded.input_ids[position] not in end_of_turn:
            count += 1
    return count


register_task("sft", SFTTask())
