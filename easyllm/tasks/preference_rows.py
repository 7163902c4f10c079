"""Preference rows (pairs for DPO, ORPO and rm; labelled replies for KTO) read as SFT conversations.

Each side of a row is read as one SFT conversation through `data.formats` (the prompt, then
the reply), so message cleaning, ShareGPT roles, system prompts, tools and every error's
file:line behave exactly as in SFT. New pair shapes are one `register_pair_shape` each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..data.formats import (
    ROW_FORMATS,
    SHARED_KEYS,
    SHAREGPT_ROLES,
    Message,
    convert_record,
    json_list,
)
from ..data.loading import Record
from ..data.prepared import DataOptions
from ..data.rows import ParsedRows, RowProblem, parse_rows
from ..errors import ConfigError
from ..registry import Registry

SIDES = ("chosen", "rejected")


@dataclass
class PreferenceRow:
    """A prompt and its replies: {"chosen", "rejected"} (pairs) or {"completion"} + label (KTO)."""

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
    """Decorator: register `row -> (chosen SFT row, rejected SFT row)`; detection tries in order."""

    def wrap(fn: Callable) -> Callable:
        PAIR_SHAPES.register(name, PairShape(name, required, sft_shape, fn))
        return fn

    return wrap


@register_pair_shape("sharegpt", ("conversations", "chosen", "rejected"), "sharegpt")
def _sharegpt_pair(row: Mapping[str, Any]) -> tuple[dict, dict]:
    history = json_list(row, "conversations", "messages")
    return tuple(
        {**_shared(row), "conversations": [*history, *_one_reply(row, side)]} for side in SIDES
    )


@register_pair_shape(
    "prompt-chosen-rejected", ("prompt", "chosen", "rejected"), "prompt-completion"
)
def _explicit_pair(row: Mapping[str, Any]) -> tuple[dict, dict]:
    return tuple(
        {**_shared(row), "prompt": row["prompt"], "completion": _one_reply(row, side)}
        for side in SIDES
    )


@register_pair_shape("chosen-rejected (implicit prompt)", ("chosen", "rejected"), "messages")
def _implicit_pair(row: Mapping[str, Any]) -> tuple[dict, dict]:
    """Two whole conversations that differ only in their last reply (Anthropic HH style)."""
    if not all(
        isinstance(row[side], list) or str(row[side]).lstrip().startswith("[") for side in SIDES
    ):
        raise RowProblem(
            "missing column",
            f"no 'prompt' or 'conversations' (the row has {sorted(row)}); "
            "give the prompt, or make 'chosen' and 'rejected' whole conversations",
        )
    return tuple({**_shared(row), "messages": json_list(row, side, "messages")} for side in SIDES)


def parse_pair(record: Record) -> PreferenceRow:
    """A pair row as one prompt and two replies; RowProblem says what is wrong and the fix."""
    row = _row_of(record)
    shape = _detect_pair_shape(row)
    sides = []
    for side, sft_row in zip(SIDES, shape.to_sides(row)):
        try:
            sides.append(
                convert_record(Record(sft_row, record.origin), ROW_FORMATS.get(shape.sft_shape))
            )
        except RowProblem as exc:
            raise RowProblem(exc.kind, f"'{side}': {exc}") from None
    chosen, rejected = sides
    prompt = chosen.messages[:-1]
    if rejected.messages[:-1] != prompt:
        raise RowProblem(
            "prompts differ",
            "'chosen' and 'rejected' differ before their last reply; a "
            "pair must continue one conversation (put the shared turns in 'prompt')",
        )
    _require_prompt(prompt)
    if chosen.messages[-1]["content"] == rejected.messages[-1]["content"]:
        raise RowProblem(
            "same reply",
            "'chosen' and 'rejected' are the same reply, so there is nothing "
            "to prefer; fix or drop the row",
        )
    replies = {"chosen": chosen.messages[-1], "rejected": rejected.messages[-1]}
    return PreferenceRow(prompt, replies, record.origin, shape.name, chosen.tools)


def parse_labelled(record: Record) -> PreferenceRow:
    """An unpaired row: any SFT shape (messages, prompt/completion, ...) and "label": true/false."""
    row = _row_of(record)
    if row.get("label") is None:
        raise RowProblem(
            "missing column",
            f"missing or null 'label' (the row has {sorted(row)}); add "
            '"label": true for a desirable reply or false for an undesirable one',
        )
    label = _as_bool(row["label"])
    conversation = convert_record(
        Record({k: v for k, v in row.items() if k != "label"}, record.origin)
    )
    _require_prompt(conversation.messages[:-1])
    return PreferenceRow(
        conversation.messages[:-1],
        {"completion": conversation.messages[-1]},
        record.origin,
        conversation.format,
        conversation.tools,
        label,
    )


def read_preference_rows(
    records: Iterable[Record], parse: Callable[[Record], PreferenceRow], options: DataOptions
) -> ParsedRows[PreferenceRow]:
    """Every usable row and the rejected ones; with on_bad_rows="raise", one DataError names all."""
    if options.input_key or options.output_key:
        raise ConfigError(
            "input_key/output_key name an SFT prompt and reply; for preference data pass "
            "columns={'prompt': ..., 'chosen': ..., 'rejected': ...} (or 'label' for KTO)"
        )
    return parse_rows(
        records, lambda record: parse(_renamed(record, options.columns)), options.on_bad_rows
    )


# -- helpers --------------------------------------------------------------------------------------
def _row_of(record: Record) -> Mapping[str, Any]:
    if record.problem:
        raise RowProblem("unreadable row", record.problem)
    if not isinstance(record.row, Mapping):
        raise RowProblem(
            "wrong type",
            f"a row must be an object with named fields, got "
            f"{type(record.row).__name__}: {str(record.row)[:60]}",
        )
    return record.row


def _renamed(record: Record, columns: Mapping[str, str] | None) -> Record:
    """The record with `columns` ({shape key: your column}) renamed to the shape's keys."""
    if not columns or not isinstance(record.row, Mapping):
        return record
    row = {
        **record.row,
        **{key: record.row[col] for key, col in columns.items() if col in record.row},
    }
    return dataclasses.replace(record, row=row)


def _detect_pair_shape(row: Mapping[str, Any]) -> PairShape:
    for shape in PAIR_SHAPES:
        if all(row.get(key) is not None for key in shape.required):
            return shape
    missing = [side for side in SIDES if row.get(side) is None]
    if len(missing) < 2 or row.get("prompt") is not None or row.get("conversations") is not None:
        raise RowProblem(
            "missing column",
            f"missing or null {missing} (the row has {sorted(row)}); a "
            "preference pair needs a 'chosen' and a 'rejected' reply to the same prompt",
        )
    shapes = "; ".join(f"{shape.name} {list(shape.required)}" for shape in PAIR_SHAPES)
    raise RowProblem(
        "unknown row shape",
        f"unrecognized row with keys {sorted(row)}. Preference shapes: "
        f"{shapes}. For other column names pass columns={{'prompt': 'your_prompt_column', "
        "'chosen': ..., 'rejected': ...} to load_data()",
    )


def _one_reply(row: Mapping[str, Any], side: str) -> list[Any]:
    """`row[side]` as one message in a list: text, {role, content}, {from, value} or [message]."""
    value = row[side]
    if isinstance(value, list):
        if len(value) != 1:
            raise RowProblem(
                "wrong type",
                f"'{side}' must be one assistant reply (text or one message), "
                f"got a list of {len(value)} messages; put earlier turns in the prompt",
            )
        value = value[0]
    if isinstance(value, Mapping) and "from" in value:
        value = {
            "role": SHAREGPT_ROLES.get(value["from"], value["from"]),
            "content": value.get("value"),
        }
    message = dict(value) if isinstance(value, Mapping) else {"role": "assistant", "content": value}
    if message.get("role", "assistant") != "assistant":
        raise RowProblem(
            "wrong role",
            f"'{side}' must be an assistant reply, got a {message['role']!r} "
            "message; put other turns in the prompt",
        )
    return [message]


def _shared(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in SHARED_KEYS if row.get(key) is not None}


def _require_prompt(prompt: list[Message]) -> None:
    if not prompt:
        raise RowProblem(
            "no prompt", "the row has a reply but no prompt to answer; add the user turn"
        )


def _as_bool(label: Any) -> bool:
    if isinstance(label, bool):
        return label
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):  # CSV cells are text
        return label.strip().lower() == "true"
    raise RowProblem(
        "bad label",
        f"'label' must be true (a desirable reply) or false (an undesirable "
        f"one), got {type(label).__name__} {label!r}",
    )
