"""What preference tasks (DPO, KTO, ORPO) share: reading rows, encoding replies, scoring them.

Each side of a row is read as one SFT conversation through `data.formats` (the prompt, then
the reply), so message cleaning, ShareGPT roles, system prompts, tools and every error's
file:line behave exactly as in SFT. A prompt is encoded as `generate()` encodes it
(`ChatEncoder.encode_prompt`: the history plus the generation prompt); a reply is the tokens
that follow it in the rendered conversation, up to and including its end-of-turn token. Message
content is tokenized as text, so a "<|im_end|>" inside a prompt cannot forge a turn. TRL's
trainers receive these ids (`prompt_ids`, `chosen_ids`, ...) and never tokenize again.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel, TrainingArguments

from ..adapters import without_adapter
from ..data.encoding import IGNORE_INDEX, ChatEncoder
from ..data.formats import (
    ROW_FORMATS,
    SHARED_KEYS,
    SHAREGPT_ROLES,
    Conversation,
    Message,
    convert_record,
)
from ..data.loading import Record, Reject, RowProblem, source_name, summarize_problems
from ..data.split import train_val_split
from ..errors import ConfigError, DataError, UsageError
from ..loss import CHUNK_TOKENS
from ..registry import Registry
from . import causal
from .base import DataOptions, DataReport, PreparedData

SIDES = ("chosen", "rejected")
# Set on a fully fine-tuned model once its trainer exists: from then on the model is no longer
# its own reference, and held-out metrics need the reference log-probs stored before training.
REFERENCE_STORED = "_easyllm_reference_stored"


@dataclass
class PreferenceRow:
    """One prompt and its replies: {"chosen", "rejected"} for pairs, {"completion"} plus a label for KTO."""

    prompt: list[Message]
    replies: dict[str, Message]
    origin: str
    format: str
    tools: list[dict[str, Any]] | None = None
    label: bool | None = None


# -- row shapes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairShape:
    """A preference-pair shape: its keys, and the SFT shape each side becomes (chosen, rejected)."""

    name: str
    required: tuple[str, ...]
    sft_shape: str
    to_sides: Callable[[Mapping[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


PAIR_SHAPES: Registry[PairShape] = Registry("preference row shape")


def register_pair_shape(name: str, required: tuple[str, ...], sft_shape: str) -> Callable:
    """Decorator: register `row -> (chosen SFT row, rejected SFT row)`; detection tries shapes in order."""

    def wrap(fn: Callable) -> Callable:
        PAIR_SHAPES.register(name, PairShape(name, required, sft_shape, fn))
        return fn

    return wrap


@register_pair_shape("sharegpt", ("conversations", "chosen", "rejected"), "sharegpt")
def _sharegpt_pair(row: Mapping[str, Any]) -> tuple[dict, dict]:
    history = _as_list(row, "conversations")
    return tuple({**_shared(row), "conversations": [*history, *_one_reply(row, side)]} for side in SIDES)


@register_pair_shape("prompt-chosen-rejected", ("prompt", "chosen", "rejected"), "prompt-completion")
def _explicit_pair(row: Mapping[str, Any]) -> tuple[dict, dict]:
    return tuple({**_shared(row), "prompt": row["prompt"], "completion": _one_reply(row, side)} for side in SIDES)


@register_pair_shape("chosen-rejected (implicit prompt)", ("chosen", "rejected"), "messages")
def _implicit_pair(row: Mapping[str, Any]) -> tuple[dict, dict]:
    """Two whole conversations that differ only in their last reply (Anthropic HH style)."""
    if not all(isinstance(row[side], list) or str(row[side]).lstrip().startswith("[") for side in SIDES):
        raise RowProblem("missing column", f"no 'prompt' or 'conversations' (the row has {sorted(row)}); "
                         "give the prompt, or make 'chosen' and 'rejected' whole conversations")
    return tuple({**_shared(row), "messages": _as_list(row, side)} for side in SIDES)


def parse_pair(record: Record) -> PreferenceRow:
    """A pair row as one prompt and two replies; RowProblem says what is wrong and the fix."""
    row = _row_of(record)
    shape = _detect_pair_shape(row)
    sides = []
    for side, sft_row in zip(SIDES, shape.to_sides(row)):
        try:
            sides.append(convert_record(Record(sft_row, record.origin), ROW_FORMATS.get(shape.sft_shape)))
        except RowProblem as exc:
            raise RowProblem(exc.kind, f"'{side}': {exc}") from None
    chosen, rejected = sides
    prompt = chosen.messages[:-1]
    if rejected.messages[:-1] != prompt:
        raise RowProblem("prompts differ", "'chosen' and 'rejected' differ before their last reply; a "
                         "pair must continue one conversation (put the shared turns in 'prompt')")
    _require_prompt(prompt)
    if chosen.messages[-1]["content"] == rejected.messages[-1]["content"]:
        raise RowProblem("same reply", "'chosen' and 'rejected' are the same reply, so there is nothing "
                         "to prefer; fix or drop the row")
    replies = {"chosen": chosen.messages[-1], "rejected": rejected.messages[-1]}
    return PreferenceRow(prompt, replies, record.origin, shape.name, chosen.tools)


def parse_labelled(record: Record) -> PreferenceRow:
    """An unpaired row: any SFT shape (messages, prompt/completion, ...) plus "label": true/false."""
    row = _row_of(record)
    if row.get("label") is None:
        raise RowProblem("missing column", f"missing or null 'label' (the row has {sorted(row)}); add "
                         "\"label\": true for a desirable reply or false for an undesirable one")
    label = _as_bool(row["label"])
    conversation = convert_record(Record({k: v for k, v in row.items() if k != "label"}, record.origin))
    _require_prompt(conversation.messages[:-1])
    return PreferenceRow(conversation.messages[:-1], {"completion": conversation.messages[-1]},
                         record.origin, conversation.format, conversation.tools, label)


def parse_rows(
    records: Iterable[Record], parse: Callable[[Record], PreferenceRow], options: DataOptions
) -> tuple[list[PreferenceRow], list[Reject]]:
    """Every usable row, and the rejected ones; with on_bad_rows="raise" one DataError names them all."""
    if options.on_bad_rows not in ("raise", "skip"):
        raise ConfigError(f"on_bad_rows={options.on_bad_rows!r}: choose 'raise' or 'skip'")
    if options.input_key or options.output_key:
        raise ConfigError("input_key/output_key name an SFT prompt and reply; for preference data pass "
                          "columns={'prompt': ..., 'chosen': ..., 'rejected': ...} (or 'label' for KTO)")
    rows, rejects, sources = [], [], {}
    for record in records:
        sources.setdefault(source_name(record.origin))
        try:
            rows.append(parse(_renamed(record, options.columns)))
        except RowProblem as exc:
            rejects.append(Reject(record.origin, str(exc), record.row, exc.kind))
    if rejects and options.on_bad_rows == "raise":
        problems = [f"{reject.origin}: {reject.reason}" for reject in rejects]
        names = list(sources)
        where = names[0] if len(names) == 1 else f"{len(names)} sources ({', '.join(names[:3])})"
        raise DataError(summarize_problems(problems, where) + "\nFix these rows, or pass "
                        "on_bad_rows='skip' to train on the rest and get the rejected rows back.")
    return rows, rejects


def rejects_summary(rejects: list[Reject], rows: int) -> str:
    """E.g. "skipped 3 of 100 rows: 2 missing column, 1 same reply" (for DataReport.rejected)."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in Counter(r.kind for r in rejects).most_common())
    return f"skipped {len(rejects)} of {rows} rows: {kinds}"


# -- encoding -------------------------------------------------------------------------------------
def prepare_rows(
    records: list[Record], encoder: ChatEncoder, options: DataOptions,
    parse: Callable[[Record], PreferenceRow], *, shuffle_train: bool = False,
) -> PreparedData:
    """Read, check and encode preference rows; hold out `options.val_size` of them."""
    rows, rejects = parse_rows(records, parse, options)
    source = source_name(records[0].origin) if records else "data"
    report = DataReport(source, len(rows) + len(rejects), dict(Counter(row.format for row in rows)))
    if rejects:
        report.rejected = rejects_summary(rejects, report.rows)
    scanned = [Conversation([*row.prompt, *row.replies.values()], row.origin, row.format) for row in rows]
    encoder = causal.apply_control_token_policy(scanned, encoder, options, report)
    encoder = dataclasses.replace(encoder, train_on="last_assistant")
    train_rows, val_rows = train_val_split(rows, options.val_size, options.seed)
    if shuffle_train:  # for trainers that read rows in order (KTO pairs neighbours for its KL term)
        random.Random(options.seed).shuffle(train_rows)
    train = encode_rows(train_rows, encoder, options.max_length, report)
    validation = encode_rows(val_rows, encoder, options.max_length, report) if val_rows else None
    if len(train) == 0:
        raise DataError(f"No usable example is left in {source}:\n{report}")
    report.train_examples, report.val_examples = len(train), len(validation or [])
    return PreparedData(train, validation, report, options.max_length, rejects)


def encode_rows(rows: list[PreferenceRow], encoder: ChatEncoder, max_length: int, report: DataReport) -> Dataset:
    """Columns `prompt_ids`, `<reply>_ids` per reply, `length` (for length grouping) and `label` if any."""
    columns: dict[str, list] = {}
    for row in rows:
        prompt_ids = encoder.encode_prompt(row.prompt, tools=row.tools)
        room = max_length - len(prompt_ids)
        if room < 1:
            report.dropped.append(f"{row.origin}: the prompt alone has {len(prompt_ids)} tokens, no room "
                                  f"for a reply within max_length={max_length} (raise it or shorten the prompt)")
            continue
        replies = {name: reply_ids(encoder, row.prompt, reply, row.tools, prompt_ids)
                   for name, reply in row.replies.items()}
        if any(len(ids) > room for ids in replies.values()):
            report.truncated += 1
        for name, ids in replies.items():
            if len(ids) > room:
                report.truncated_trained_tokens += len(ids) - room
                report.unterminated_replies += 1
                replies[name] = ids[:room]
        example = {"prompt_ids": prompt_ids, **{f"{name}_ids": ids for name, ids in replies.items()},
                   "length": len(prompt_ids) + max(len(ids) for ids in replies.values())}
        if row.label is not None:
            example["label"] = row.label
        for key, value in example.items():
            columns.setdefault(key, []).append(value)
        report.trained_tokens += sum(len(ids) for ids in replies.values())
        report.total_tokens += len(prompt_ids) * len(replies) + sum(len(ids) for ids in replies.values())
        report.lengths.append(example["length"])
    return Dataset.from_dict(columns)


def reply_ids(
    encoder: ChatEncoder, prompt: list[Message], reply: Message, tools: list | None, prompt_ids: list[int]
) -> list[int]:
    """The tokens the model must produce after `prompt_ids`: the reply and its end-of-turn token."""
    encoded = encoder.encode([*prompt, reply], tools=tools)  # train_on="last_assistant"
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    if encoded.input_ids[: len(prompt_ids)] != prompt_ids or not trained or trained[0] != len(prompt_ids):
        raise ConfigError(
            "The chat template renders the prompt differently when a reply follows it, so the prompt "
            "tokens are not a prefix of prompt + reply and a preference reply cannot be cut out exactly. "
            "Pass a template whose generation prompt is a prefix of the rendered reply (e.g. template='chatml')."
        )
    return encoded.input_ids[len(prompt_ids): trained[-1] + 1]


# -- scoring --------------------------------------------------------------------------------------
@torch.inference_mode()
def completion_logps(
    model: PreTrainedModel, prompts: list[list[int]], completions: list[list[int]], pad_id: int, batch_size: int
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
        pairs = list(zip(prompts[start:start + batch_size], completions[start:start + batch_size]))
        longest = max(len(p) + len(c) for p, c in pairs)
        ids = torch.tensor([p + c + [pad_id] * (longest - len(p) - len(c)) for p, c in pairs], device=device)
        scored = torch.tensor([[0] * len(p) + [1] * len(c) + [0] * (longest - len(p) - len(c))
                               for p, c in pairs], device=device)[:, 1:].bool()
        attention = torch.tensor([[1] * (len(p) + len(c)) + [0] * (longest - len(p) - len(c))
                                  for p, c in pairs], device=device)
        hidden = base.get_decoder()(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
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
    """Log-probs of the `reply` column under the reference model; None when the model is its own reference.

    With an adapter, the reference is the base with the adapter disabled (no second copy). A fully
    fine-tuned model keeps no reference: its trainer stores the reference log-probs of the held-out
    rows in column `stored` before training; before any trainer existed the model is the reference.
    """
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            return completion_logps(model, dataset["prompt_ids"], dataset[f"{reply}_ids"], pad_id, batch_size)[0]
    if stored in dataset.column_names:
        return torch.tensor(dataset[stored], dtype=torch.float32)
    if getattr(model, REFERENCE_STORED, False):
        raise UsageError(
            "This model was fully fine-tuned, so no reference model is kept: only the held-out rows of "
            "load_data(..., val_size=...) have reference log-probs (stored before training). Evaluate "
            "those with evaluate(), or train with method='lora' to evaluate any data."
        )
    return None


# -- the TRL trainers -----------------------------------------------------------------------------
def trl_class(module: str, name: str) -> type:
    """A class from TRL, or an ImportError with the install command (TRL is an optional dependency)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError("Preference tasks (dpo, kto, orpo) train with TRL: pip install 'trl>=1.16,<2'") from None


def trl_config(config_cls: type, args: TrainingArguments, **task_options: Any) -> TrainingArguments:
    """`args` (easyllm's defaults plus the user's overrides) as a TRL config with `task_options`."""
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return config_cls(**{**fields, **task_options})


def reference_trainer(trainer_cls: type, config_cls: type, model: PreTrainedModel, tokenizer,
                      data: PreparedData, args: TrainingArguments, **task_options: Any):
    """A TRL trainer that needs a reference model (DPO, KTO), without a second copy of the weights.

    With LoRA or QLoRA the reference is the same model with the adapter disabled; with full
    fine-tuning TRL computes the reference log-probs once, before training, and the validation
    split keeps them (evaluate() reads them back).
    """
    with_adapter = isinstance(model, PeftModel)
    config = trl_config(config_cls, args, max_length=data.max_length,
                        precompute_ref_log_probs=not with_adapter, **task_options)
    trainer = trainer_cls(model=model, ref_model=None, args=config, train_dataset=data.train,
                          eval_dataset=data.validation, processing_class=tokenizer)
    if not with_adapter:
        setattr(model, REFERENCE_STORED, True)
        if data.validation is not None:
            data.validation = trainer.eval_dataset  # with the stored reference log-probs
    return trainer


@functools.cache
def pretokenized(module: str, name: str, hook: str, replacement: Callable) -> type:
    """A TRL trainer with the one hook that tokenizes text replaced: rows arrive as token ids."""
    base = trl_class(module, name)
    return type(f"Pretokenized{name}", (base,), {hook: replacement, "__doc__": pretokenized.__doc__})


# -- helpers --------------------------------------------------------------------------------------
def _row_of(record: Record) -> Mapping[str, Any]:
    if record.problem:
        raise RowProblem("unreadable row", record.problem)
    if not isinstance(record.row, Mapping):
        raise RowProblem("wrong type", f"a row must be an object with named fields, got "
                         f"{type(record.row).__name__}: {str(record.row)[:60]}")
    return record.row


def _renamed(record: Record, columns: Mapping[str, str] | None) -> Record:
    """The record with `columns` ({shape key: your column}) renamed to the shape's keys."""
    if not columns or not isinstance(record.row, Mapping):
        return record
    row = {**record.row, **{key: record.row[col] for key, col in columns.items() if col in record.row}}
    return dataclasses.replace(record, row=row)


def _detect_pair_shape(row: Mapping[str, Any]) -> PairShape:
    for shape in PAIR_SHAPES:
        if all(row.get(key) is not None for key in shape.required):
            return shape
    missing = [side for side in SIDES if row.get(side) is None]
    if len(missing) < 2 or row.get("prompt") is not None or row.get("conversations") is not None:
        raise RowProblem("missing column", f"missing or null {missing} (the row has {sorted(row)}); a "
                         "preference pair needs a 'chosen' and a 'rejected' reply to the same prompt")
    shapes = "; ".join(f"{shape.name} {list(shape.required)}" for shape in PAIR_SHAPES)
    raise RowProblem("unknown row shape", f"unrecognized row with keys {sorted(row)}. Preference shapes: "
                     f"{shapes}. For other column names pass columns={{'prompt': 'your_prompt_column', "
                     "'chosen': ..., 'rejected': ...} to load_data()")


def _one_reply(row: Mapping[str, Any], side: str) -> list[Any]:
    """`row[side]` as a one-message list: text, a {role, content} or {from, value} message, or [message]."""
    value = row[side]
    if isinstance(value, list):
        if len(value) != 1:
            raise RowProblem("wrong type", f"'{side}' must be one assistant reply (text or one message), "
                             f"got a list of {len(value)} messages; put earlier turns in the prompt")
        value = value[0]
    if isinstance(value, Mapping) and "from" in value:
        value = {"role": SHAREGPT_ROLES.get(value["from"], value["from"]), "content": value.get("value")}
    message = dict(value) if isinstance(value, Mapping) else {"role": "assistant", "content": value}
    if message.get("role", "assistant") != "assistant":
        raise RowProblem("wrong role", f"'{side}' must be an assistant reply, got a {message['role']!r} "
                         "message; put other turns in the prompt")
    return [message]


def _as_list(row: Mapping[str, Any], key: str) -> list[Any]:
    value = row[key]
    if isinstance(value, str) and value.lstrip().startswith("["):  # a JSON list, as in a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem("wrong type", f"'{key}' is not valid JSON ({exc}); fix it") from None
    if not isinstance(value, list):
        raise RowProblem("wrong type", f"'{key}' must be a list of messages, got {type(value).__name__}: "
                         f"{str(value)[:60]}")
    return value


def _shared(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in SHARED_KEYS if row.get(key) is not None}


def _require_prompt(prompt: list[Message]) -> None:
    if not prompt:
        raise RowProblem("no prompt", "the row has a reply but no prompt to answer; add the user turn")


def _as_bool(label: Any) -> bool:
    if isinstance(label, bool):
        return label
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):  # CSV cells are text
        return label.strip().lower() == "true"
    raise RowProblem("bad label", f"'label' must be true (a desirable reply) or false (an undesirable "
                     f"one), got {type(label).__name__} {label!r}")
