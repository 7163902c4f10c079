"""An OpenAI-compatible chat server for a ModelRunner, on the standard library's HTTP server.

    POST /v1/chat/completions   (non-streaming, or "stream": true as server-sent events)
    GET  /v1/models

Any OpenAI client, and easyllm.Endpoint, can then use a local or fine-tuned model. Requests
are handled in threads (at most `Limits.max_connections`) but generate one at a time (a lock),
which is what one CPU or GPU can do anyway. Sampling follows the runner: greedy unless
"temperature" > 0. A refused request gets an OpenAI-style {"error": {...}} body: 400 (bad
values), 401 (API key), 403 (Host or Origin), 413 (body too large), 415 (not JSON), 503
(busy). What the server promises is in docs/serve.md.

>>> with serve_in_background(ModelRunner.load("runs/a")) as base_url:
...     openai.OpenAI(base_url=base_url, api_key="none").chat.completions.create(...)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import EasyLLMError
from .serving.guard import Guard, read_json
from .serving.requests import (
    DEFAULT_MAX_TOKENS,
    BadRequest,
    ChatRequest,
    Limits,
    parse_chat_request,
)
from .serving.server import ClientGone, ModelServer, cancel_on_hangup, context_length

if TYPE_CHECKING:
    from .runner import ModelRunner

__all__ = [
    "BadRequest",
    "ChatHandler",
    "Limits",
    "ModelServer",
    "make_server",
    "parse_chat_request",
    "serve",
    "serve_in_background",
]
log = logging.getLogger("easyllm.serve")


class ChatHandler(BaseHTTPRequestHandler):
    """Routes requests to one method per endpoint; subclass it to change one route (tests do)."""

    server: ModelServer
    routes: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", "/v1/models"): "list_models",
        ("POST", "/v1/chat/completions"): "chat_completions",
    }
    streaming = False  # set once a 200 event stream has begun: errors then go into the stream

    def setup(self) -> None:
        self.timeout = self.server.limits.timeout  # every socket read and write
        super().setup()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def list_models(self) -> None:
        model = {
            "id": self.server.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "easyllm",
        }
        self.send_json(200, {"object": "list", "data": [model]})

    def chat_completions(self) -> None:
        limits = self.server.limits
        request = parse_chat_request(
            read_json(self.headers, self.rfile, limits.max_body_bytes), limits
        )
        with self.server.model_turn() as runner:  # the tokenizer is not shared across threads
            prompt_tokens, max_tokens = self._fit_context(request)
            options = {
                "max_new_tokens": max_tokens,
                "stop": request.stop,
                "max_time": limits.generation_timeout,
                **request.sampling,
            }
            if request.stream:
                self._stream(runner, request, options)
                return
            _seed(request)
            cancel = threading.Event()
            with cancel_on_hangup(self.connection, cancel):
                replies = runner.generate(
                    [request.messages] * request.n, return_details=True, cancel=cancel, **options
                )
            if cancel.is_set():
                raise ClientGone
        completion_tokens = sum(reply.generated_tokens for reply in replies)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": reply.text},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
            for i, reply in enumerate(replies)
        ]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        body = {**_envelope("chat.completion", self.server.model_name), "choices": choices}
        self.send_json(200, {**body, "usage": usage})

    # -- plumbing ------------------------------------------------------------------------------
    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, error: BadRequest) -> None:
        body = {
            "error": {
                "message": str(error),
                "type": error.kind,
                "param": error.param,
                "code": error.code,
            }
        }
        if not self.streaming:
            self.send_json(error.status, body)
            return
        # The status line is sent already: the error is the stream's last event.
        with suppress(OSError):
            self.wfile.write(f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _dispatch(self, method: str) -> None:
        route = self.routes.get((method, self.path.split("?", 1)[0].rstrip("/")))
        self.close_connection = True  # one request per connection: a thread is never parked
        try:
            self.server.guard.check(method, self.headers)
            if route is None:
                known = ", ".join(f"{m} {p}" for m, p in self.routes)
                raise BadRequest(
                    f"No route {method} {self.path}; this server has {known}", status=404
                )
            getattr(self, route)()
        except ClientGone:
            log.info("client %s went away; its generation was stopped", self.client_address[0])
        except BadRequest as exc:
            self._answer(exc)
        except MemoryError:
            self._answer(_server_error("The server ran out of memory for this request", 503))
        except Exception as exc:  # keep serving; the details go to the log
            if type(exc).__name__ == "OutOfMemoryError":  # torch's, without importing torch
                self._answer(_server_error("The server ran out of memory for this request", 503))
                return
            log.exception("request %s %s failed", method, self.path)
            self._answer(_server_error(f"The server failed ({type(exc).__name__}); see its log"))

    def _answer(self, error: BadRequest) -> None:
        with suppress(OSError):  # the client may have gone already
            self.send_error_json(error)

    def _fit_context(self, request: ChatRequest) -> tuple[int, int]:
        """Prompt tokens and the reply's token budget, both within the model's context."""
        runner, limits = self.server.runner, self.server.limits
        try:
            prompt_tokens = len(runner.encoder.encode_prompt(request.messages))
        except Exception as exc:  # noqa: BLE001 (the template refused these messages)
            raise BadRequest(
                f"The model's chat template cannot render these messages: {exc}", param="messages"
            ) from None
        context = context_length(runner.model)
        most_prompt = min(limits.max_prompt_tokens or context, context - 1)
        if prompt_tokens > most_prompt:
            raise BadRequest(
                f"The prompt is {prompt_tokens} tokens; this server takes at most {most_prompt}",
                param="messages",
                code="context_length_exceeded",
            )
        room = context - prompt_tokens
        if request.max_tokens is None:
            return prompt_tokens, min(DEFAULT_MAX_TOKENS, room, limits.max_tokens)
        if request.max_tokens > room:
            raise BadRequest(
                f"max_tokens={request.max_tokens} does not fit: the prompt is {prompt_tokens} "
                f"tokens of the model's {context}, leaving {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return prompt_tokens, request.max_tokens

    def _stream(self, runner: ModelRunner, request: ChatRequest, options: dict[str, Any]) -> None:
        """Server-sent events: a role chunk, one chunk per piece of text, a finish chunk, [DONE].

        Called holding the model's turn; a client that goes away ends the generation.
        """
        envelope = _envelope("chat.completion.chunk", self.server.model_name)
        cancel = threading.Event()

        def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self._write_event(json.dumps(chunk, ensure_ascii=False), cancel)

        _seed(request)
        pieces = runner.stream(request.messages, cancel=cancel, **options)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.streaming = True
        send({"role": "assistant", "content": ""})
        text = ""
        with _closing(pieces):
            for piece in pieces:
                text += piece
                send({"content": piece})
        # The streamer gives text only: a reply that re-encodes to the limit was cut off.
        produced = len(runner.tokenizer.encode(text, add_special_tokens=False))
        send({}, "length" if produced >= options["max_new_tokens"] else "stop")
        self._write_event("[DONE]", cancel)

    def _write_event(self, data: str, cancel: threading.Event) -> None:
        try:
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
        except OSError as exc:  # reset, broken pipe, or a client that stopped reading
            cancel.set()
            raise ClientGone from exc


def make_server(
    runner: ModelRunner,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] = (),
    limits: Limits | None = None,
    handler: type[ChatHandler] = ChatHandler,
    quiet: bool = False,
) -> ModelServer:
    """A server bound to host:port (0: any free port), not yet serving; see `server.base_url`.

    `api_key`: if set, every request needs "Authorization: Bearer KEY" (401 otherwise).
    `allowed_hosts`: names besides localhost, 127.0.0.1, [::1] and `host` that the Host and
    Origin headers may carry (403 otherwise); "*" allows any.
    """
    if runner.encoder is None or not runner.task.capabilities.generative:
        raise EasyLLMError(
            f"Only a generative model can be served; task '{runner.task_name}' is not one."
        )
    return ModelServer(
        (host, port),
        handler,
        runner,
        model_name or runner.model_name,
        guard=Guard(api_key, host, allowed_hosts),
        limits=limits or Limits(),
        quiet=quiet,
    )


def serve(
    runner: ModelRunner,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] = (),
    limits: Limits | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until Ctrl-C. `api_key` defaults to the EASYLLM_API_KEY environment variable.

    >>> serve(ModelRunner.load("runs/a"), api_key="s3cret", limits=Limits(max_tokens=256))
    """
    api_key = api_key if api_key is not None else os.environ.get("EASYLLM_API_KEY")
    with make_server(
        runner,
        host,
        port,
        model_name=model_name,
        api_key=api_key,
        allowed_hosts=allowed_hosts,
        limits=limits,
    ) as server:
        login = "an API key" if api_key else "no API key (set EASYLLM_API_KEY to require one)"
        announce(
            f"easyllm: serving {server.model_name} at {server.base_url} with {login} "
            "(Ctrl-C to stop)"
        )
        with suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped, not an error
            server.serve_forever()


@contextmanager
def serve_in_background(
    runner: ModelRunner,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] = (),
    limits: Limits | None = None,
    handler: type[ChatHandler] = ChatHandler,
) -> Iterator[str]:
    """Serve from a thread while the block runs and yield the base URL, e.g. http://127.0.0.1:53121/v1.

    >>> with serve_in_background(runner) as url:
    ...     easyllm.synthesize(prompts, teacher=easyllm.Endpoint(runner.model_name, base_url=url))
    """
    server = make_server(
        runner,
        host,
        port,
        model_name=model_name,
        api_key=api_key,
        allowed_hosts=allowed_hosts,
        limits=limits,
        handler=handler,
        quiet=True,
    )
    thread = threading.Thread(target=server.serve_forever, name="easyllm-serve", daemon=True)
    thread.start()
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- helpers -----------------------------------------------------------------------------------
@contextmanager
def _closing(pieces: Iterator[str]) -> Iterator[None]:
    """Close a generator on the way out, so an abandoned stream stops its generation."""
    try:
        yield
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _server_error(message: str, status: int = 500) -> BadRequest:
    return BadRequest(message, status=status, kind="server_error")


def _envelope(kind: str, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def _seed(request: ChatRequest) -> None:
    if request.seed is not None and request.sampling:
        import torch

        torch.manual_seed(request.seed)
