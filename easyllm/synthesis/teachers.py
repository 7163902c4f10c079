"""Teachers: what answers the prompts. A local ModelRunner, or any OpenAI-compatible endpoint.

Both yield `(index, Reply)` as answers arrive, in any order, so each can be written at once;
Reply.finish_reason is "length" when the answer hit the token limit (it was cut off).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from ..data.conversation import Message
from ..errors import ConfigError, EasyLLMError
from ..eval.generation import Reply

if TYPE_CHECKING:
    from ..runner import ModelRunner


class TeacherError(EasyLLMError, RuntimeError):
    """The teacher failed (an endpoint still refusing after retries); answers so far are kept."""


@runtime_checkable
class Teacher(Protocol):
    """Anything with a `name` (recorded on every row) that answers prompts."""

    name: str

    def answer(
        self, prompts: Sequence[str], *, system: str | None, max_new_tokens: int, **sampling: Any
    ) -> Iterator[tuple[int, Reply]]:
        """Yield (index into `prompts`, reply) as each reply is ready."""
        ...


class LocalTeacher:
    """A ModelRunner (any local model, adapter or not) answering `batch_size` prompts at a time."""

    def __init__(
        self, runner: ModelRunner, *, name: str | None = None, batch_size: int = 16
    ) -> None:
        from peft import PeftModel

        adapter = " + adapter" if isinstance(runner.model, PeftModel) else ""
        self.runner = runner
        self.name = name or f"{runner.model_name}{adapter}"
        self.batch_size = batch_size

    def answer(
        self, prompts: Sequence[str], *, system: str | None, max_new_tokens: int, **sampling: Any
    ) -> Iterator[tuple[int, Reply]]:
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            replies = self.runner.generate(
                batch,
                system=system,
                max_new_tokens=max_new_tokens,
                batch_size=self.batch_size,
                return_details=True,
                **sampling,
            )
            yield from enumerate(replies, start)


@dataclass
class Endpoint:
    """An OpenAI-compatible chat server as the teacher: vLLM, llama.cpp, Ollama, a hosted API.

    The API key is `api_key`, or else read from the environment variable `api_key_env` (without
    either, OPENAI_API_KEY goes to OpenAI's own API only); it is never written or printed, and
    never sent over plain http to another machine. Local servers need none. Up to
    `concurrency` requests are in flight; a request answered with 429, 5xx or a timeout is
    retried `max_retries` times with exponential backoff (the openai client's: Retry-After).

    >>> teacher = Endpoint("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1")
    >>> easyllm.synthesize("prompts.jsonl", teacher=teacher)
    """

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 600.0
    name: str = ""
    _client: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0:
            raise ConfigError(
                f"Endpoint(concurrency={self.concurrency}, max_retries={self.max_retries}): "
                "concurrency must be at least 1 and max_retries at least 0"
            )
        self.name = self.name or self.model

    def answer(
        self, prompts: Sequence[str], *, system: str | None, max_new_tokens: int, **sampling: Any
    ) -> Iterator[tuple[int, Reply]]:
        """Ask for every prompt, `concurrency` at a time.

        After a failure, stop asking, yield the answers still arriving, then raise TeacherError.
        """
        client = self.client()
        from openai import APIError

        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="easyllm-teacher")
        futures = {
            pool.submit(
                self._ask, client, _messages(prompt, system), max_new_tokens, sampling
            ): index
            for index, prompt in enumerate(prompts)
        }
        failure: Exception | None = None
        try:
            for future in as_completed(futures):
                try:
                    reply = future.result()
                except CancelledError:
                    continue
                except APIError as exc:  # still failing after the client's retries
                    failure = failure or exc
                    for pending in futures:
                        pending.cancel()
                    continue
                yield futures[future], reply
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if failure is not None:
            raise TeacherError(
                f"The teacher endpoint {self.base_url or 'api.openai.com'} failed: "
                f"{_describe(failure)}. The answers received so far are saved; run "
                "synthesize() again to resume."
            ) from failure

    def client(self):
        """The openai client, made on first use (the package is an optional dependency)."""
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise ImportError(
                    "An endpoint teacher needs the openai client: "
                    'pip install "easyllm-sdk[teacher]"'
                ) from None
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=self.key(),
                max_retries=self.max_retries,
                timeout=self.timeout,
            )
        return self._client

    def key(self) -> str:
        """The API key to send: never over plain http to another machine, and the environment's
        OPENAI_API_KEY only to OpenAI itself (another endpoint's key: `api_key` or `api_key_env`).
        """
        if self.api_key is not None:
            key = self.api_key
        elif self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
        else:
            key = os.environ.get("OPENAI_API_KEY") if self.base_url is None else None
        if key and not _safe_for_keys(self.base_url):
            raise ConfigError(
                f"Endpoint(base_url={self.base_url!r}) would send the API key unencrypted to "
                "another machine: use an https:// URL (or a server on this machine)."
            )
        # Local servers (vLLM, llama.cpp, Ollama) accept any key; "EMPTY" is their convention.
        return key or "EMPTY"

    def _ask(
        self, client, messages: list[Message], max_new_tokens: int, sampling: dict[str, Any]
    ) -> Reply:
        known = {k: v for k, v in sampling.items() if k in _API_SAMPLING}
        extra = {k: v for k, v in sampling.items() if k not in _API_SAMPLING}  # e.g. top_k for vLLM
        response = client.chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=max_new_tokens,
            extra_body=extra or None,
            **known,
        )
        choice = response.choices[0]
        tokens = response.usage.completion_tokens if response.usage else 0
        # "content_filter": the provider cut the answer off; the filters reject such answers
        finish = choice.finish_reason if choice.finish_reason in _KEPT_REASONS else "stop"
        return Reply((choice.message.content or "").strip(), finish, tokens)


def _safe_for_keys(base_url: str | None) -> bool:
    """https, or plain http to this machine (loopback): where an API key may travel."""
    if base_url is None:
        return True
    parsed = urlparse(base_url)
    return parsed.scheme == "https" or parsed.hostname in ("localhost", "127.0.0.1", "::1")


_KEPT_REASONS = ("length", "content_filter")
_API_SAMPLING = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


def as_teacher(teacher: ModelRunner | Teacher, batch_size: int = 16) -> Teacher:
    """A ModelRunner becomes a LocalTeacher; an Endpoint or your own Teacher is used as is."""
    from ..runner import ModelRunner

    if isinstance(teacher, ModelRunner):
        return LocalTeacher(teacher, batch_size=batch_size)
    if isinstance(teacher, Teacher):
        return teacher
    raise ConfigError(
        f"teacher={teacher!r}: pass a ModelRunner, an easyllm.Endpoint(model, base_url=...) "
        "or an object with a `name` and an `answer(prompts, ...)` method"
    )


def _messages(prompt: str, system: str | None) -> list[Message]:
    user = [{"role": "user", "content": prompt}]
    return [{"role": "system", "content": system}, *user] if system is not None else user


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    kind = f"HTTP {status}" if status else type(error).__name__
    hint = (
        " (set the API key's environment variable, or pass api_key_env=...)"
        if status == 401
        else ""
    )
    return f"{kind}: {error}{hint}"
