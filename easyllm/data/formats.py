"""Row shapes (alpaca, messages, prompt/completion, ...) normalized to one conversation schema.

A conversation is a list of messages `{"role": ..., "content": ...}` with roles system, user,
assistant and tool; a message may carry `"train": False` to keep an assistant turn untrained.
Each shape is one registration in `ROW_FORMATS`; detection tries them in registration order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DataError
from ..registry import Registry
from .loading import Record, summarize_problems

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class RowFormat:
    """A row shape: the keys that identify it and how to turn such a row into messages."""

    name: str
    required: tuple[str, ...]
    to_messages: Callable[[Mapping[str, Any]], list[Message]]

    def matches(self, row: Mapping[str, Any]) -> bool:
        return all(key in row for key in self.required)


ROW_FORMATS: Registry[RowFormat] = Registry("row format")


def register_format(name: str, required: tuple[str, ...]):
    """Decorator: register a function `row -> messages` as the format `name`."""

    def wrap(fn: Callable[[Mapping[str, Any]], list[Message]]) -> Callable:
        ROW_FORMATS.register(name, RowFormat(name, required, fn))
        return fn

    return wrap


@register_format("messages", ("messages",))
def _messages(row: Mapping[str, Any]) -> list[Message]:
    messages = row["messages"]
    if not isinstance(messages, list):
        raise ValueError(f"'messages' must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    return [dict(message) if isinstance(message, Mapping) else message for message in messages]


@register_format("alpaca", ("instruction", "output"))
def _alpaca(row: Mapping[str, Any]) -> list[Message]:
    instruction, extra = row["instruction"], row.get("input") or ""
    prompt = f"{instruction}\n\n{extra}" if isinstance(instruction, str) and extra else instruction
    return _with_system(row, prompt, row["output"])


@register_format("prompt-completion", ("prompt", "completion"))
def _prompt_completion(row: Mapping[str, Any]) -> list[Message]:
    return _with_system(row, row["prompt"], row["completion"])


@register_format("question-answer", ("question", "answer"))
def _question_answer(row: Mapping[str, Any]) -> list[Message]:
    return _with_system(row, row["question"], row["answer"])


@register_format("input-output", ("input", "output"))
def _input_output(row: Mapping[str, Any]) -> list[Message]:
    return _with_system(row, row["input"], row["output"])


def _with_system(row: Mapping[str, Any], prompt: Any, reply: Any) -> list[Message]:
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def key_format(input_key: str, output_key: str) -> RowFormat:
    """A format for other column names, like Lamini's `load_data_from_jsonlines(path, input_key, output_key)`."""
    return RowFormat(
        f"{input_key}/{output_key}",
        (input_key, output_key),
        lambda row: _with_system(row, row[input_key], row[output_key]),
    )


@dataclass
class Conversation:
    messages: list[Message]
    origin: str
    format: str


def to_conversations(records: list[Record], row_format: RowFormat | None = None) -> list[Conversation]:
    """Detect each row's shape, normalize it, and validate it; raise once listing every bad row."""
    conversations: list[Conversation] = []
    problems: list[str] = []
    for record in records:
        try:
            fmt = row_format or detect_format(record.row)
            if row_format and not row_format.matches(record.row):
                raise ValueError(f"missing key(s) {[k for k in fmt.required if k not in record.row]}")
            messages = [_clean_message(message) for message in fmt.to_messages(record.row)]
            validate_conversation(messages)
        except ValueError as exc:
            problems.append(f"{record.origin}: {exc}")
            continue
        conversations.append(Conversation(messages, record.origin, fmt.name))
    if problems:
        raise DataError(summarize_problems(problems, _where(records)))
    return conversations


def detect_format(row: Any) -> RowFormat:
    if not isinstance(row, Mapping):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}: {str(row)[:60]}")
    for fmt in ROW_FORMATS:
        if fmt.matches(row):
            return fmt
    shapes = "; ".join(f"{f.name} {list(f.required)}" for f in ROW_FORMATS)
    raise ValueError(
        f"unrecognized row with keys {sorted(row)}. Known shapes: {shapes}. "
        "For other column names pass input_key=... and output_key=... to load_data()"
    )


def _clean_message(message: Any) -> Message:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise ValueError(f"each message needs 'role' and 'content', got {str(message)[:80]}")
    content = message["content"]
    if isinstance(content, list):  # OpenAI-style content parts
        if not all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
            raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
        content = "".join(str(part.get("text", "")) for part in content)
    cleaned = {**message, "content": content}
    return cleaned


def validate_conversation(messages: list[Message]) -> None:
    """Raise ValueError naming the first thing that makes `messages` untrainable."""
    if not messages:
        raise ValueError("the conversation has no messages")
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"message {index} has unknown role '{role}'; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {index} ({role}) content must be text, got {type(content).__name__}")
        if not content.strip() and role != "system":
            raise ValueError(f"message {index} ({role}) is empty")
        if role == "system" and index != 0:
            raise ValueError(f"message {index} is a system message; only the first message may be one")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant reply to learn from")


def _where(records: list[Record]) -> str:
    origins = {record.origin.rsplit(":", 1)[0].split("[")[0] for record in records[:1]}
    return next(iter(origins), "the data")
