"""What causal-LM tasks (SFT, pre-training, ...) share: model loading, trainer, loss metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from ..data.collator import PaddingCollator
from ..data.control_tokens import CONTROL_TOKEN_POLICIES, control_token_strings, find_control_token
from ..data.encoding import IGNORE_INDEX, ChatEncoder
from ..data.formats import Conversation
from ..data.packing import PackedCollator
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.rows import summarize_problems
from ..errors import ConfigError, DataError
from ..eval.evaluation import evaluate_loss
from ..modeling import load_causal_lm
from ..train.attention import supports_packed_attention
from ..train.engine import TrainedTokenTrainer
from .base import ModelLoading


def load_model(loading: ModelLoading, info: Mapping[str, Any]) -> PreTrainedModel:
    """The checkpoint as a causal LM, loaded as the method says (full precision or 4-bit)."""
    return load_causal_lm(loading.source, **loading.options())


def preview_ids(row: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """input_ids and labels; a preference row shows its prompt and its chosen (or only) reply."""
    if "input_ids" in row:
        return row["input_ids"], row["labels"]
    reply = row.get("chosen_ids", row.get("completion_ids", []))
    return row["prompt_ids"] + reply, [IGNORE_INDEX] * len(row["prompt_ids"]) + reply


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    args: TrainingArguments,
    settings,
) -> TrainedTokenTrainer:
    """The Trainer with the trained-positions-only loss; packed batches unless packing=False."""
    per_example = settings.packing and supports_packed_attention(model, data.max_length)
    if settings.packing:  # with per-example attention, a batch is one row without any padding
        collator = PackedCollator(tokenizer.pad_token_id, data.max_length, one_row=per_example)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id)
    return TrainedTokenTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=collator,
        processing_class=tokenizer,
        per_example_attention=per_example,
    )


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int,
    max_length: int,
) -> dict[str, float]:
    """eval_loss and perplexity on the trained tokens of encoded rows (already cut to length)."""
    return evaluate_loss(model, dataset, PaddingCollator(tokenizer.pad_token_id), batch_size)


def apply_control_token_policy(
    conversations: list[Conversation],
    encoder: ChatEncoder,
    options: DataOptions,
    report: DataReport,
) -> ChatEncoder:
    """Count rows whose text holds control-token strings; reject them or let them act, as asked.

    Shared by every task that renders chats: the guard is the same for SFT, DPO, KTO, ORPO and rm.
    """
    policy = options.on_control_tokens
    if policy not in CONTROL_TOKEN_POLICIES:
        raise ConfigError(
            f"on_control_tokens={policy!r}: choose one of {', '.join(CONTROL_TOKEN_POLICIES)}"
        )
    strings = control_token_strings(encoder.tokenizer)
    for conversation in conversations:
        found = find_control_token(conversation.messages, strings)
        if found:
            report.control_token_rows.append(f"{conversation.origin}: {found}")
    report.control_token_policy = policy
    if policy == "reject" and report.control_token_rows:
        raise DataError(
            summarize_problems(report.control_token_rows, report.source)
            + "\nThese rows contain control-token strings (on_control_tokens='reject'). "
            "Remove them, or load with on_control_tokens='text' (the default: kept as plain text) "
            "or 'allow'."
        )
    return dataclasses.replace(encoder, content_as_text=policy != "allow")
