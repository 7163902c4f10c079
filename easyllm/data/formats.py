"""Row shapes (alpaca, sharegpt, messages, prompt/completion, ...) normalized to one schema.

The schema, a `Conversation` of messages, and its checks live in conversation.py. The replies
inside a message-list `prompt` get `"train": False`, because a prompt is context by definition.
Each shape is one registration in `ROW_FORMATS`; detection tries them in registration order.
Other column names go through `column_format({"prompt": "question", "completion": "answer"})`.
Problems name a message by its position in the conversation, counting from 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .conversation import (
    ROLES,  # noqa: F401 (serve.py reads it from here)
    Conversation,
    Message,
    clean_message,
    validate_conversation,
)
from .loading import Record
from .rows import OnBadRows, ParsedRows, Reject, RowProblem, parse_rows

SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
}
SHARED_KEYS = ("system", "tools")  # optional keys every shape may carry


@dataclass(frozen=True)
class RowFormat:
    """A row shape: the keys that identify it and how to turn such a row into messages.

    `required` names the row's columns; `columns` maps the shape's own keys to the row's
    columns when they differ (see `column_format`); `optional` lists the shape's extra keys.
    """

    name: str
    required: tuple[str, ...]
    to_messages: Callable[[Mapping[str, Any]], list[Message]]
    optional: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)

    def matches(self, row: Mapping[str, Any]) -> bool:
        # None counts as absent: Dataset and Parquet fill a column a row lacks with None.
        return all(row.get(key) is not None for key in self.required)

    def canonical(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """The row with its columns renamed to this shape's keys."""
        if not self.columns:
            return row
        return {**row, **{key: row[col] for key, col in self.columns.items() if col in row}}


ROW_FORMATS: Registry[RowFormat] = Registry("row format")


def register_format(name: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Decorator: register a function `row -> messages` as the format `name`."""

    def wrap(fn: Callable[[Mapping[str, Any]], list[Message]]) -> Callable:
        ROW_FORMATS.register(name, RowFormat(name, required, fn, optional))
        return fn

    return wrap


@register_format("messages", ("messages",))
def _messages(row: Mapping[str, Any]) -> list[Message]:
    messages = json_list(row, "messages", "{role, content} objects")
    return _with_system(row, [_copy(message) for message in messages])


@register_format("sharegpt", ("conversations",))
def _sharegpt(row: Mapping[str, Any]) -> list[Message]:
    turns = json_list(row, "conversations", "{from, value} objects")
    return _with_system(row, [_sharegpt_message(turn, n) for n, turn in enumerate(turns, 1)])


@register_format("alpaca", ("instruction", "output"), ("input", "history"))
def _alpaca(row: Mapping[str, Any]) -> list[Message]:
    instruction, extra = row["instruction"], row.get("input") or ""
    prompt = f"{instruction}\n\n{extra}" if isinstance(instruction, str) and extra else instruction
    history = [
        {"role": role, "content": text}
        for pair in _history(row)
        for role, text in zip(("user", "assistant"), pair)
    ]
    return _with_system(row, [*history, _turn("user", prompt), _turn("assistant", row["output"])])


@register_format("prompt-completion", ("prompt", "completion"))
def _prompt_completion(row: Mapping[str, Any]) -> list[Message]:
    prompt = _turns(row["prompt"], "user", train=False)
    return _with_system(row, [*prompt, *_turns(row["completion"], "assistant")])


@register_format("question-answer", ("question", "answer"))
def _question_answer(row: Mapping[str, Any]) -> list[Message]:
    return _with_system(row, [_turn("user", row["question"]), _turn("assistant", row["answer"])])


@register_format("input-output", ("input", "output"))
def _input_output(row: Mapping[str, Any]) -> list[Message]:
    return _with_system(row, [_turn("user", row["input"]), _turn("assistant", row["output"])])


def column_format(columns: Mapping[str, str]) -> RowFormat:
    """A registered shape read from other column names: {shape key: your column}.

    The shape is the first one whose required keys `columns` names.
    >>> column_format({"prompt": "question", "completion": "answer", "system": "sys"}).name
    'prompt-completion (prompt=question, completion=answer, system=sys)'
    """
    for fmt in ROW_FORMATS:
        if set(fmt.required) <= set(columns) <= {*fmt.required, *fmt.optional, *SHARED_KEYS}:
            named = ", ".join(f"{key}={column}" for key, column in columns.items())
            required = tuple(columns[key] for key in fmt.required)
            return RowFormat(
                f"{fmt.name} ({named})", required, fmt.to_messages, fmt.optional, dict(columns)
            )
    shapes = "; ".join(
        f"{f.name}: {' + '.join(f.required)} [{', '.join((*f.optional, *SHARED_KEYS))}]"
        for f in ROW_FORMATS
    )
    raise ConfigError(
        f"columns={dict(columns)} does not name the keys of one row shape. Map each required key "
        f"(and any optional one in [...]) to your column name. Shapes: {shapes}."
    )


def key_format(input_key: str, output_key: str) -> RowFormat:
    """Prompt/completion from two other column names (like Lamini's input_key/output_key)."""
    fmt = column_format({"prompt": input_key, "completion": output_key})
    name = f"{input_key}/{output_key}"
    return RowFormat(name, fmt.required, fmt.to_messages, columns=fmt.columns)


def convert_rows(
    records: Iterable[Record],
    row_format: RowFormat | None = None,
    *,
    on_bad_rows: OnBadRows = "raise",
) -> ParsedRows[Conversation]:
    """Normalize and validate every row; bad rows raise one DataError, or come back as rejects.

    >>> result = convert_rows(iter_records("chats.jsonl"), on_bad_rows="skip")
    >>> write_rejects(result.rejects, "rejects.jsonl"); print(result.summary())
    """
    return parse_rows(records, lambda record: convert_record(record, row_format), on_bad_rows)


def to_conversations(
    records: Iterable[Record], row_format: RowFormat | None = None
) -> list[Conversation]:
    """Every row as a conversation, or one DataError listing the bad rows (see `convert_rows`)."""
    return convert_rows(records, row_format).rows


def iter_conversations(
    records: Iterable[Record], row_format: RowFormat | None = None
) -> Iterator[Conversation | Reject]:
    """Stream: each record becomes a Conversation or a Reject, one at a time, in order."""
    for record in records:
        try:
            yield convert_record(record, row_format)
        except RowProblem as exc:
            yield Reject(record.origin, str(exc), record.row, exc.kind)
        except ValueError as exc:  # a custom format's own check
            yield Reject(record.origin, str(exc), record.row)


def convert_record(record: Record, row_format: RowFormat | None = None) -> Conversation:
    """One record as a validated Conversation; RowProblem says what is wrong and the fix."""
    if record.problem:
        raise RowProblem("unreadable row", record.problem)
    if not isinstance(record.row, Mapping):
        raise _not_an_object(record.row)
    fmt = row_format or detect_format(record.row)
    if not fmt.matches(record.row):
        missing = [key for key in fmt.required if record.row.get(key) is None]
        raise RowProblem(
            "missing column",
            f"missing or null column(s) {missing} (the row has "
            f"{sorted(record.row)}); check the column names passed for {fmt.name}",
        )
    row = fmt.canonical(record.row)
    messages = [clean_message(message, n) for n, message in enumerate(fmt.to_messages(row), 1)]
    validate_conversation(messages)
    return Conversation(messages, record.origin, fmt.name, _tools(row))


def detect_format(row: Any) -> RowFormat:
    """The first registered shape whose keys the row has; RowProblem naming the shapes if none."""
    if not isinstance(row, Mapping):
        raise _not_an_object(row)
    for fmt in ROW_FORMATS:
        if fmt.matches(row):
            return fmt
    if "text" in row:
        raise RowProblem(
            "plain text row",
            f"a 'text' row without a prompt and reply (keys "
            f"{sorted(row)}): SFT needs prompt/reply pairs such as prompt/completion "
            'or messages; to train on plain text use task="pt"',
        )
    shapes = "; ".join(f"{f.name} {list(f.required)}" for f in ROW_FORMATS)
    raise RowProblem(
        "unknown row shape",
        f"unrecognized row with keys {sorted(row)}. Known shapes: {shapes}. For other column "
        "names pass columns={'prompt': 'your_prompt_column', "
        "'completion': 'your_reply_column'} (or input_key=... and output_key=...) to load_data()",
    )


# -- helpers -------------------------------------------------------------------------------------
def _turn(role: str, content: Any) -> Message:
    return {"role": role, "content": content}


def _copy(message: Any) -> Any:
    return dict(message) if isinstance(message, Mapping) else message


def _with_system(row: Mapping[str, Any], messages: list[Any]) -> list[Any]:
    first = messages[0] if messages else None
    if not row.get("system") or (isinstance(first, Mapping) and first.get("role") == "system"):
        return messages
    return [_turn("system", row["system"]), *messages]


def _turns(value: Any, role: str, train: bool = True) -> list[Any]:
    """A prompt or completion: a string (one message) or a list of messages."""
    if not isinstance(value, list):
        return [_turn(role, value)]
    messages = [_copy(message) for message in value]
    for message in messages:
        if not train and isinstance(message, dict) and message.get("role") == "assistant":
            message["train"] = False
    return messages


def json_list(row: Mapping[str, Any], key: str, of: str) -> list[Any]:
    """`row[key]` as a list; a JSON string of a list (as in a CSV cell) is parsed."""
    value = row.get(key)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem("wrong type", f"'{key}' is not valid JSON ({exc}); fix it") from None
    if not isinstance(value, list):
        raise RowProblem(
            "wrong type",
            f"'{key}' must be a list of {of}, got {type(value).__name__}: {str(value)[:60]}",
        )
    return value


def _sharegpt_message(turn: Any, n: int) -> Any:
    if not isinstance(turn, Mapping) or "from" not in turn:
        return _copy(turn)  # a {role, content} message, or one that clean_message explains
    if turn["from"] not in SHAREGPT_ROLES:
        raise RowProblem(
            "unknown role",
            f"message {n} has unknown ShareGPT role "
            f"{turn['from']!r}; use one of {', '.join(SHAREGPT_ROLES)}",
        )
    value = turn.get("value")
    if isinstance(value, (dict, list)):  # a function call written as an object
        value = json.dumps(value, ensure_ascii=False)
    return _turn(SHAREGPT_ROLES[turn["from"]], value)


def _history(row: Mapping[str, Any]) -> list[Any]:
    if not row.get("history"):
        return []
    pairs = json_list(row, "history", "[user, assistant] pairs")
    for n, pair in enumerate(pairs, 1):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowProblem(
                "wrong type",
                f"history entry {n} must be a [user, assistant] pair, got {str(pair)[:60]}",
            )
    return pairs


def _tools(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    if not row.get("tools"):
        return None
    tools = json_list(row, "tools", "tool definitions (or a JSON string of that list)")
    if not all(isinstance(tool, Mapping) for tool in tools):
        raise RowProblem(
            "wrong type",
            "'tools' must hold one object per tool, e.g. "
            "{'name': ..., 'description': ..., 'parameters': {...}}",
        )
    return [dict(tool) for tool in tools]


def _not_an_object(row: Any) -> RowProblem:
    return RowProblem(
        "wrong type",
        f"a row must be an object with named fields, got "
        f"{type(row).__name__}: {str(row)[:60]}; write each row as "
        '{"prompt": ..., "completion": ...} or another known shape',
    )
