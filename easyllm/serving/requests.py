"""The chat server's limits and the one parser of a chat-completions body (OpenAI's rules)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..data.formats import ROLES, Message

DEFAULT_MAX_TOKENS = 512


class BadRequest(ValueError):
    """A request the server refuses: answered with `status` and an OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.param, self.status, self.kind, self.code = param, status, kind, code


@dataclass(frozen=True)
class Limits:
    """What one request may ask and how long the server waits; every field must be positive.

    >>> serve(runner, limits=Limits(max_tokens=256, timeout=10))
    """

    max_body_bytes: int = 4 * 2**20  # a larger Content-Length is answered 413
    max_messages: int = 1024
    max_n: int = 8
    max_tokens: int = 4096  # also never past the model's context (prompt + reply)
    max_prompt_tokens: int | None = None  # None: the model's context
    max_stop: int = 4  # OpenAI's own limit on stop strings
    max_stop_chars: int = 256
    timeout: float = 30.0  # seconds a socket read or write may block
    queue_timeout: float = 300.0  # seconds a request waits for the model before a 503
    generation_timeout: float = 600.0  # seconds one generate() call may run (then cut off)
    max_connections: int = 32  # open connections beyond this are answered 503 at once

    def __post_init__(self) -> None:
        bad = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) is not None and not getattr(self, f.name) > 0
        ]
        if bad:
            raise ValueError(f"Limits must be positive: {', '.join(bad)}")


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request; `max_tokens` None means: the default, within context."""

    messages: list[Message]
    n: int
    stream: bool
    seed: int | None
    max_tokens: int | None
    stop: list[str] | None
    sampling: dict[str, float]


# Fields that change what a reply must be: ignoring them would give a wrong answer silently.
_REFUSED = {
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "functions": "function calls",
    "function_call": "function calls",
}


def parse_chat_request(body: dict[str, Any], limits: Limits | None = None) -> ChatRequest:
    """Validate a chat-completions body against OpenAI's ranges and the server's `limits`."""
    limits = limits or Limits()
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "'messages' must be a non-empty list of {role, content} objects", param="messages"
        )
    if len(messages) > limits.max_messages:
        raise BadRequest(
            f"'messages' has {len(messages)} messages; this server takes at most "
            f"{limits.max_messages}",
            param="messages",
        )
    clean = [_message(message, i) for i, message in enumerate(messages)]
    if clean[-1]["role"] == "assistant":
        raise BadRequest(
            "The last message is the assistant's: end with a user message to get a reply",
            param="messages",
        )
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, int, 1, limits.max_tokens)
    n = _number(body, "n", int, 1, limits.max_n)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"'stream' must be true or false, got {stream!r}", param="stream")
    if stream and (n or 1) > 1:
        raise BadRequest("Streaming gives one reply: use n=1 with stream=true", param="n")
    sampling = {}
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1, low_open=True)
    if temperature:  # 0 or absent: greedy, deterministic
        sampling["temperature"] = temperature
        if top_p is not None:
            sampling["top_p"] = top_p
    return ChatRequest(
        messages=clean,
        n=n or 1,
        stream=bool(stream),
        seed=_number(body, "seed", int, -(2**63), 2**64 - 1),
        max_tokens=max_tokens,
        stop=_stop(body.get("stop"), limits),
        sampling=sampling,
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key, what in _REFUSED.items():
        if body.get(key) not in (None, [], "none"):
            raise BadRequest(f"This server does not support {what}: remove '{key}'", param=key)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise BadRequest(
            'This server gives plain text only: \'response_format\' must be {"type": "text"} '
            "(JSON mode and JSON schemas are not supported)",
            param="response_format",
        )


def _stop(stop: Any, limits: Limits) -> list[str] | None:
    stop = [stop] if isinstance(stop, str) else stop
    if stop is None:
        return None
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("'stop' must be a non-empty string or a list of them", param="stop")
    if len(stop) > limits.max_stop or any(len(s) > limits.max_stop_chars for s in stop):
        raise BadRequest(
            f"'stop' takes at most {limits.max_stop} strings of at most "
            f"{limits.max_stop_chars} characters",
            param="stop",
        )
    return stop or None


def _message(message: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise BadRequest(
            f"{where} must be an object with a role ({', '.join(ROLES)}) and content", param=where
        )
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text can be read
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise BadRequest(f"{where}: only text content parts are supported", param=where)
        content = "".join(str(part.get("text", "")) for part in content)
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be text", param=where)
    return {"role": message["role"], "content": content}


def _number(
    body: dict[str, Any], key: str, kind: type, low: float, high: float, *, low_open: bool = False
) -> Any:
    """body[key] as `kind` within [low, high] (or (low, high]); None when absent."""
    value = body.get(key)
    if value is None:
        return None
    what = "an integer" if kind is int else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (kind is int and value != int(value))
    ):
        raise BadRequest(f"'{key}' must be {what}, got {value!r}", param=key)
    if value > high or value < low or (low_open and value == low):
        low_side = f"above {low}" if low_open else f"at least {low}"
        raise BadRequest(
            f"'{key}' must be {what} {low_side} and at most {high}, got {value!r}", param=key
        )
    return kind(value)
