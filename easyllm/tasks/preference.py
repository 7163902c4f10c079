"""What preference tasks (DPO, KTO, ORPO) share: one parametrised task, encoding, scoring, trainers.

Rows are read by `preference_rows` (pairs, or replies labelled good/bad). A prompt is encoded
as `generate()` encodes it (`ChatEncoder.encode_prompt`: the history plus the generation
prompt); a reply is the tokens that follow it in the rendered conversation, up to and
including its end-of-turn token. Message content is tokenized as text, so a "<|im_end|>"
inside a prompt cannot forge a turn. TRL's trainers receive these ids (`prompt_ids`,
`chosen_ids`, ...) and never tokenize again: `pretokenized` replaces the one TRL hook that
would (see compat.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.encoding import IGNORE_INDEX, ChatEncoder
from ..data.formats import Conversation, Message
from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.truncation import Truncation, cut_replies
from ..errors import ConfigError, UsageError
from ..methods import has_adapter, without_adapter
from ..train.loss import CHUNK_TOKENS
from . import causal
from .base import Capabilities, finish_prepared, split_rows
from .preference_rows import (
    SIDES,
    PreferenceRow,
    parse_labelled,
    parse_pair,
    read_preference_rows,
    register_pair_shape,
)

__all__ = [
    "SIDES",
    "PreferenceRow",
    "PreferenceTask",
    "parse_labelled",
    "parse_pair",
    "register_pair_shape",
]

# Set on a fully fine-tuned model once its trainer exists: from then on the model is no longer
# its own reference, and held-out metrics need the reference log-probs stored before training.
REFERENCE_STORED = "_easyllm_reference_stored"
PREFERENCE_CAPABILITIES = Capabilities(previews=True, truncation=Truncation.REPLY_END)
TrainerBuilder = Callable[
    [PreTrainedModel, PreTrainedTokenizerBase, PreparedData, TrainingArguments], Trainer
]
Metrics = Callable[[PreTrainedModel, PreTrainedTokenizerBase, Dataset, int], dict[str, float]]


@dataclass
class PreferenceTask:
    """One preference task: how its rows are read, which TRL trainer learns from them, its metrics.

    >>> register_task("dpo", PreferenceTask("dpo", parse_pair, dpo_trainer, dpo_metrics))
    """

    name: str
    parse: Callable[[Record], PreferenceRow]
    trainer: TrainerBuilder
    metrics: Metrics
    # for trainers that read rows in order (KTO pairs neighbours for its KL term)
    shuffle_train: bool = False
    capabilities: Capabilities = PREFERENCE_CAPABILITIES

    load_model = staticmethod(causal.load_model)
    preview_ids = staticmethod(causal.preview_ids)

    def prepare(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder,
        options: DataOptions,
    ) -> PreparedData:
        return prepare_rows(records, encoder, options, self.parse, shuffle_train=self.shuffle_train)

    def build_trainer(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        args: TrainingArguments,
        settings: Any,
    ) -> Trainer:
        return self.trainer(model, tokenizer, data, args)

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        batch_size: int,
        max_length: int,
    ) -> dict[str, float]:
        return self.metrics(model, tokenizer, dataset, batch_size)


# -- encoding -------------------------------------------------------------------------------------
def prepare_rows(
    records: list[Record],
    encoder: ChatEncoder,
    options: DataOptions,
    parse: Callable[[Record], PreferenceRow],
    *,
    shuffle_train: bool = False,
) -> PreparedData:
    """Read, check and encode preference rows; hold out `options.val_size` of them."""
    parsed = read_preference_rows(records, parse, options)
    rows = parsed.rows
    report = DataReport.of(parsed, dict(Counter(row.format for row in rows)))
    scanned = [
        Conversation([*row.prompt, *row.replies.values()], row.origin, row.format) for row in rows
    ]
    encoder = causal.apply_control_token_policy(scanned, encoder, options, report)
    encoder = dataclasses.replace(encoder, train_on="last_assistant")
    train_rows, val_rows = split_rows(rows, options)
    if shuffle_train:  # for trainers that read rows in order (KTO pairs neighbours for its KL term)
        random.Random(options.seed).shuffle(train_rows)
    train = encode_rows(train_rows, encoder, options.max_length, report)
    validation = encode_rows(val_rows, encoder, options.max_length, report) if val_rows else None
    longest = max(train["length"], default=0) if len(train) else 0
    return finish_prepared(
        train,
        validation,
        report,
        options,
        parsed.rejects,
        longest_example=longest,
        nothing_left="No usable example is left",
    )


def encode_rows(
    rows: list[PreferenceRow], encoder: ChatEncoder, max_length: int, report: DataReport
) -> Dataset:
    """Columns `prompt_ids`, `<reply>_ids` per reply, `length` (to group by) and `label` if any."""
    columns: dict[str, list] = {}
    for row in rows:
        prompt_ids = encoder.encode_prompt(row.prompt, tools=row.tools)
        room = max_length - len(prompt_ids)
        if room < 1:
            report.dropped.append(
                f"{row.origin}: the prompt alone has {len(prompt_ids)} tokens, no room "
                f"for a reply within max_length={max_length} (raise it or shorten the prompt)"
            )
            continue
        replies = {
            name: reply_ids(encoder, row.prompt, reply, row.tools, prompt_ids)
            for name, reply in row.replies.items()
        }
        replies, lost, cut = cut_replies(replies, room)
        report.truncated += bool(cut)
        report.truncated_trained_tokens += lost
        report.unterminated_replies += cut
        example = {
            "prompt_ids": prompt_ids,
            **{f"{name}_ids": ids for name, ids in replies.items()},
            "length": len(prompt_ids) + max(len(ids) for ids in replies.values()),
        }
        if row.label is not None:
            example["label"] = row.label
        for key, value in example.items():
            columns.setdefault(key, []).append(value)
        reply_tokens = sum(len(ids) for ids in replies.values())
        report.trained_tokens += reply_tokens
        report.total_tokens += len(prompt_ids) * len(replies) + reply_tokens
        report.lengths.append(example["length"])
    return Dataset.from_dict(columns)


def reply_ids(
    encoder: ChatEncoder,
    prompt: list[Message],
    reply: Message,
    tools: list | None,
    prompt_ids: list[int],
) -> list[int]:
    """The tokens the model must produce after `prompt_ids`: the reply and its end-of-turn token."""
    encoded = encoder.encode([*prompt, reply], tools=tools)  # train_on="last_assistant"
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    if (
        encoded.input_ids[: len(prompt_ids)] != prompt_ids
        or not trained
        or trained[0] != len(prompt_ids)
    ):
        raise ConfigError(
            "The chat template renders the prompt differently when a reply follows it, so the "
            "prompt tokens are not a prefix of prompt + reply and a preference reply cannot be cut "
            "out exactly. Pass a template whose generation prompt is a prefix of the rendered "
            "reply (e.g. template='chatml')."
        )
    return encoded.input_ids[len(prompt_ids) : trained[-1] + 1]


# -- scoring --------------------------------------------------------------------------------------
@torch.inference_mode()
def completion_logps(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each completion after its prompt, and its token count.

    The output layer runs only on completion positions, a chunk at a time (see loss.py), so a
    [tokens, vocab] tensor for the whole batch never exists.
    """
    base = without_adapter(model)
    head, device = base.get_output_embeddings(), next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, counts = [], []
    for start in range(0, len(prompts), batch_size):
        pairs = list(
            zip(prompts[start : start + batch_size], completions[start : start + batch_size])
        )
        longest = max(len(p) + len(c) for p, c in pairs)
        ids = torch.tensor(
            [p + c + [pad_id] * (longest - len(p) - len(c)) for p, c in pairs], device=device
        )
        scored = torch.tensor(
            [[0] * len(p) + [1] * len(c) + [0] * (longest - len(p) - len(c)) for p, c in pairs],
            device=device,
        )[:, 1:].bool()
        attention = torch.tensor(
            [[1] * (len(p) + len(c)) + [0] * (longest - len(p) - len(c)) for p, c in pairs],
            device=device,
        )
        hidden = base.get_decoder()(
            input_ids=ids, attention_mask=attention, use_cache=False
        ).last_hidden_state
        rows = torch.arange(len(pairs), device=device).unsqueeze(1).expand_as(scored)[scored]
        hidden, targets = hidden[:, :-1][scored], ids[:, 1:][scored]
        total = torch.zeros(len(pairs), dtype=torch.float32, device=device)
        for piece in range(0, targets.numel(), CHUNK_TOKENS):
            chunk = slice(piece, piece + CHUNK_TOKENS)
            logps = -F.cross_entropy(head(hidden[chunk]).float(), targets[chunk], reduction="none")
            total.index_add_(0, rows[chunk], logps)
        sums.append(total.cpu())
        counts.append(scored.sum(dim=1).cpu())
    model.train(was_training)
    return torch.cat(sums), torch.cat(counts)


def reference_logps(
    model: PreTrainedModel, dataset: Dataset, reply: str, stored: str, pad_id: int, batch_size: int
) -> torch.Tensor | None:
    """Log-probs of the `reply` column under the reference model; None if the model is its own.

    With an adapter, the reference is the base with the adapter disabled (no second copy). A fully
    fine-tuned model keeps no reference: its trainer stores the reference log-probs of the held-out
    rows in column `stored` before training; before any trainer existed the model is the reference.
    """
    if has_adapter(model):
        with model.disable_adapter():
            return completion_logps(
                model, dataset["prompt_ids"], dataset[f"{reply}_ids"], pad_id, batch_size
            )[0]
    if stored in dataset.column_names:
        return torch.tensor(dataset[stored], dtype=torch.float32)
    if getattr(model, REFERENCE_STORED, False):
        raise UsageError(
            "This model was fully fine-tuned, so no reference model is kept: only the held-out "
            "rows of load_data(..., val_size=...) have reference log-probs (stored before "
            "training). Evaluate those with evaluate(), or train with method='lora' to evaluate "
            "any data."
        )
    return None


# -- the TRL trainers -----------------------------------------------------------------------------
def trl_class(module: str, name: str) -> type:
    """A class from TRL, or an ImportError with the install command (TRL is optional)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError(
            "Preference tasks (dpo, kto, orpo) train with TRL: pip install 'trl>=1.16,<2'"
        ) from None


def trl_config(config_cls: type, args: TrainingArguments, **task_options: Any) -> TrainingArguments:
    """`args` (easyllm's defaults plus the user's overrides) as a TRL config with `task_options`."""
    fields = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init
    }
    return config_cls(**{**fields, **task_options})


def reference_trainer(
    trainer_cls: type,
    config_cls: type,
    model: PreTrainedModel,
    tokenizer,
    data: PreparedData,
    args: TrainingArguments,
    **task_options: Any,
):
    """A TRL trainer that needs a reference model (DPO, KTO), without a second copy of the weights.

    With LoRA or QLoRA the reference is the same model with the adapter disabled; with full
    fine-tuning TRL computes the reference log-probs once, before training, and the validation
    split keeps them (evaluate() reads them back).
    """
    with_adapter = has_adapter(model)
    config = trl_config(
        config_cls,
        args,
        max_length=data.max_length,
        precompute_ref_log_probs=not with_adapter,
        **task_options,
    )
    trainer = trainer_cls(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
    )
    if not with_adapter:
        setattr(model, REFERENCE_STORED, True)
        if data.validation is not None:
            data.validation = trainer.eval_dataset  # with the stored reference log-probs
    return trainer


@functools.cache
def pretokenized(module: str, name: str, hook: str, replacement: Callable) -> type:
    """A TRL trainer with the one hook that tokenizes text replaced: rows arrive as token ids."""
    base = trl_class(module, name)
    return type(
        f"Pretokenized{name}", (base,), {hook: replacement, "__doc__": pretokenized.__doc__}
    )
