"""Supervised fine-tuning on conversations: train on assistant replies, never on prompts."""

from __future__ import annotations

from collections import Counter

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..data.collator import PaddingCollator
from ..data.encoding import IGNORE_INDEX, ChatEncoder
from ..data.formats import Conversation, key_format, to_conversations
from ..data.loading import Record
from ..data.split import train_val_split
from ..errors import DataError
from .base import DataOptions, DataReport, PreparedData, register_task


class SFTTask:
    name = "sft"

    def prepare(self, records: list[Record], encoder: ChatEncoder, options: DataOptions) -> PreparedData:
        row_format = None
        if options.input_key or options.output_key:
            row_format = key_format(options.input_key or "input", options.output_key or "output")
        conversations = to_conversations(records, row_format)
        source = records[0].origin.rsplit(":", 1)[0].split("[")[0] if records else "data"
        report = DataReport(source, len(records), dict(Counter(c.format for c in conversations)))
        train_rows, val_rows = train_val_split(conversations, options.val_size, options.seed)
        train = self._encode(train_rows, encoder, options.max_length, report)
        validation = self._encode(val_rows, encoder, options.max_length, report) if val_rows else None
        if len(train) == 0:
            raise DataError(f"No trainable example is left in {source}:\n{report}")
        report.train_examples, report.val_examples = len(train), len(validation or [])
        return PreparedData(train, validation, report)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> PaddingCollator:
        return PaddingCollator(tokenizer.pad_token_id)

    @staticmethod
    def _encode(
        conversations: list[Conversation], encoder: ChatEncoder, max_length: int, report: DataReport
    ) -> Dataset:
        rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        for conversation in conversations:
            encoded = encoder.encode(conversation.messages)
            if len(encoded.input_ids) > max_length:
                report.truncated += 1
                encoded.input_ids, encoded.labels = encoded.input_ids[:max_length], encoded.labels[:max_length]
            if all(label == IGNORE_INDEX for label in encoded.labels):
                report.dropped.append(
                    f"{conversation.origin}: no reply token left within max_length={max_length} "
                    "(raise max_length or shorten the prompt)"
                )
                continue
            rows["input_ids"].append(encoded.input_ids)
            rows["labels"].append(encoded.labels)
            report.trained_tokens += encoded.trained_tokens
            report.total_tokens += len(encoded.input_ids)
        return Dataset.from_dict(rows)


register_task("sft", SFTTask())
