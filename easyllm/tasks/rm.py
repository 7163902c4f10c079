"""Reward modelling: a one-output head learns to score the chosen reply above the rejected one.

Pairs are read exactly as DPO reads them (`preference.parse_pair`: prompt/chosen/rejected,
ShareGPT, or two conversations; the same checks and file:line errors). Each side is then one
whole conversation, the prompt and that reply, rendered with the runner's chat template
(content stays text), as `score()` renders what it is given. The model is the checkpoint as a
sequence classifier with `num_labels=1`, whose reward is read at the last non-padding token;
from a causal-LM folder its `score` head is new, and LoRA's "SEQ_CLS" task type trains that
head fully besides the adapters. The loss is -log sigmoid(r_chosen - r_rejected) per pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from ..data.encoding import ChatEncoder
from ..data.formats import ROW_FORMATS, Conversation, Message, convert_record
from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.rows import RowProblem, summarize_problems
from ..data.truncation import Truncation, fits
from ..errors import ConfigError, DataError, UsageError
from ..methods import HEAD_MODULES
from . import causal
from .base import Capabilities, ModelLoading, finish_prepared, register_task, split_rows
from .preference_rows import parse_pair, read_preference_rows


@dataclass
class Pair:
    """Both sides of a preference pair as whole conversations (the shared prompt, then a reply)."""

    chosen: list[Message]
    rejected: list[Message]
    origin: str
    tools: list[dict[str, Any]] | None = None


class RewardModelTask:
    """Preference pairs in, a model that scores conversations out (`score()`); higher is preferred.

    >>> runner = ModelRunner(task="rm")                          # doctest: +SKIP
    >>> runner.load_data("pairs.jsonl"); runner.train()          # doctest: +SKIP
    >>> runner.score([[{"role": "user", "content": "Hi"},
    ...                {"role": "assistant", "content": "Hello!"}]])  # doctest: +SKIP
    """

    name = "rm"
    capabilities = Capabilities(
        peft_task_type="SEQ_CLS", generative=False, scores=True, truncation=Truncation.DROP
    )

    def load_model(self, loading: ModelLoading, info: Mapping[str, Any]) -> PreTrainedModel:
        return load_reward_model(loading)

    def prepare(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder,
        options: DataOptions,
    ) -> PreparedData:
        """Pairs read as DPO reads them (`preference_rows.parse_pair`), each side a conversation."""
        parsed = read_preference_rows(records, parse_pair, options)
        rows = parsed.rows
        report = DataReport.of(parsed, dict(Counter(row.format for row in rows)))
        pairs = [
            Pair(
                row.prompt + [row.replies["chosen"]],
                row.prompt + [row.replies["rejected"]],
                row.origin,
                row.tools,
            )
            for row in rows
        ]
        scanned = [Conversation(p.chosen + p.rejected[-1:], p.origin, "pair") for p in pairs]
        encoder = causal.apply_control_token_policy(scanned, encoder, options, report)
        train_pairs, val_pairs = split_rows(pairs, options)
        train = encode_pairs(train_pairs, encoder, options.max_length, report)
        validation = (
            encode_pairs(val_pairs, encoder, options.max_length, report) if val_pairs else None
        )
        longest = (
            max(
                (max(len(c), len(r)) for c, r in zip(train["chosen_ids"], train["rejected_ids"])),
                default=0,
            )
            if len(train)
            else 0
        )
        return finish_prepared(
            train,
            validation,
            report,
            options,
            parsed.rejects,
            longest_example=longest,
            nothing_left="No preference pair is left to train on",
        )

    def build_trainer(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        args: TrainingArguments,
        settings: Any,
    ) -> PairwiseRewardTrainer:
        return PairwiseRewardTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.validation,
            data_collator=PairCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
        )

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        batch_size: int,
        max_length: int,
    ) -> dict[str, float]:
        return evaluate_pairs(model, tokenizer, dataset, batch_size)

    @staticmethod
    def score(
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder,
        texts_or_conversations: Sequence[str | list[Message]],
        batch_size: int = 8,
    ) -> list[float]:
        return score(model, tokenizer, encoder, texts_or_conversations, batch_size)


def load_reward_model(loading: ModelLoading) -> PreTrainedModel:
    """The checkpoint as a sequence classifier with one output, the reward (float32 or 4-bit base).

    A new head is drawn from a fixed seed, so every run starts from the same one; the global
    random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(
            loading.source, num_labels=1, **loading.options(keep_full_precision=HEAD_MODULES)
        )


def encode_pairs(
    pairs: list[Pair], encoder: ChatEncoder, max_length: int, report: DataReport
) -> Dataset:
    """Token ids of both sides; a pair with a side over `max_length` is skipped and reported."""
    rows: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "length": []}
    for pair in pairs:
        chosen = encoder.encode(pair.chosen, tools=pair.tools).input_ids
        rejected = encoder.encode(pair.rejected, tools=pair.tools).input_ids
        if not fits([len(chosen), len(rejected)], max_length):
            # Cutting would score a reply without its end; the reward is read at the last token.
            report.dropped.append(
                f"{pair.origin}: {len(chosen)}/{len(rejected)} tokens (chosen/rejected) exceed "
                f"max_length={max_length}; raise max_length"
            )
            continue
        rows["chosen_ids"].append(chosen)
        rows["rejected_ids"].append(rejected)
        rows["length"].append(len(chosen) + len(rejected))  # what group_by_length sorts by
        report.lengths += [len(chosen), len(rejected)]
        report.total_tokens += len(chosen) + len(rejected)
    report.trained_tokens = report.total_tokens  # the whole of both sides shapes the reward
    return Dataset.from_dict(rows)


@dataclass
class PairCollator:
    """Chosen then rejected sequences, right-padded, with a mask; `labels`: 1 chosen, 0 rejected."""

    pad_token_id: int

    def __call__(self, pairs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = [pair["chosen_ids"] for pair in pairs]
        rejected = [pair["rejected_ids"] for pair in pairs]
        batch = pad_sequences(chosen + rejected, self.pad_token_id)
        batch["labels"] = torch.tensor([1] * len(pairs) + [0] * len(pairs), dtype=torch.long)
        return batch


def pad_sequences(sequences: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(ids) for ids in sequences)
    return {
        "input_ids": torch.tensor(
            [list(ids) + [pad_token_id] * (longest - len(ids)) for ids in sequences]
        ),
        "attention_mask": torch.tensor(
            [[1] * len(ids) + [0] * (longest - len(ids)) for ids in sequences]
        ),
    }


def rewards(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One reward per row of `batch` (read by the model at each row's last non-padding token)."""
    output = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    )
    return output.logits.squeeze(-1).float()


def pair_rewards(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = rewards(model, batch)
    return scores[batch["labels"] == 1], scores[batch["labels"] == 0]


class PairwiseRewardTrainer(Trainer):
    """The Trainer with one hook replaced: the loss is -log sigmoid(r_chosen - r_rejected) per pair.

    `num_items_in_batch` counts both rows of every pair of the accumulated batch (labels 1 and 0).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_rewards(model, inputs)
        loss_sum = -F.logsigmoid(chosen - rejected).sum()
        pairs = num_items_in_batch / 2 if num_items_in_batch is not None else max(chosen.numel(), 1)
        if isinstance(pairs, torch.Tensor):
            pairs = pairs.to(loss_sum.device)
        loss = loss_sum / pairs
        return (loss, {"loss": loss}) if return_outputs else loss


@torch.inference_mode()
def evaluate_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 8,
) -> dict[str, float]:
    """eval_loss, accuracy (pairs with chosen > rejected), margin (mean r_chosen - r_rejected)."""
    _sync_pad_id(model, tokenizer)
    collator, margins = PairCollator(tokenizer.pad_token_id), []
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        chosen, rejected = pair_rewards(
            model, {key: value.to(device) for key, value in batch.items()}
        )
        margins.append(chosen - rejected)
    model.train(was_training)
    margin = torch.cat(margins) if margins else torch.zeros(0)
    return {
        "eval_loss": -F.logsigmoid(margin).mean().item() if len(margin) else float("nan"),
        "accuracy": (margin > 0).float().mean().item() if len(margin) else float("nan"),
        "margin": margin.mean().item() if len(margin) else float("nan"),
        "eval_pairs": len(margin),
    }


@torch.inference_mode()
def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoder: ChatEncoder,
    texts_or_conversations: Sequence[str | list[Message]],
    batch_size: int = 8,
) -> list[float]:
    """One reward per item, in order: a str is a reply alone, a message list a conversation.

    Items are rendered with the chat template as in training, so pass a conversation ending
    with the reply to score; higher means preferred.
    >>> chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    >>> score(model, tokenizer, encoder, [chat])  # doctest: +SKIP
    [1.83]
    """
    if isinstance(texts_or_conversations, (str, Mapping)):
        raise UsageError(
            "score() takes a list of texts or conversations: score(['a reply']) or "
            "score([[{'role': 'user', ...}, {'role': 'assistant', ...}]])."
        )
    conversations, problems = [], []
    for index, item in enumerate(texts_or_conversations):
        messages = [{"role": "assistant", "content": item}] if isinstance(item, str) else item
        try:
            conversations.append(
                convert_record(
                    Record({"messages": messages}, f"texts[{index}]"), ROW_FORMATS.get("messages")
                )
            )
        except RowProblem as exc:
            problems.append(f"texts[{index}]: {exc}")
    if problems:
        raise DataError(
            summarize_problems(problems, "score()") + "\nEach item is a reply (str) or a "
            "conversation (a list of {role, content} messages) ending with the reply to score."
        )
    _sync_pad_id(model, tokenizer)
    sequences = [encoder.encode(c.messages, tools=c.tools).input_ids for c in conversations]
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = pad_sequences(sequences[start : start + batch_size], tokenizer.pad_token_id)
        scores += rewards(model, {key: value.to(device) for key, value in batch.items()}).tolist()
    model.train(was_training)
    return scores


def _sync_pad_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """The head finds each row's last token by the pad id, so the model must use the tokenizer's."""
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            "The tokenizer has no pad token, which batched rewards need; ModelRunner sets one."
        )
    model.config.pad_token_id = tokenizer.pad_token_id


register_task("rm", RewardModelTask())
