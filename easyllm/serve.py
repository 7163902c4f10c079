"""An OpenAI-compatible chat server for a ModelRunner, on the standard library's HTTP server.

    POST /v1/chat/completions   (non-streaming, or "stream": true as server-sent events)
    GET  /v1/models

Any OpenAI client, and easyllm.Endpoint, can then use a local or fine-tuned model. Requests
are handled in threads but generate one at a time (a lock), which is what one CPU or GPU can
do anyway. Sampling follows the runner: greedy unless "temperature" > 0 (OpenAI's own API
samples at temperature 1 by default; vLLM and llama.cpp use the model's defaults). A bad
request gets status 400 and an OpenAI-style {"error": {...}} body. The server holds one model,
so the request's "model" is not checked (as llama.cpp's server does); replies name the model.

>>> with serve_in_background(ModelRunner.load("runs/a")) as base_url:
...     openai.OpenAI(base_url=base_url, api_key="none").chat.completions.create(...)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

from .data.formats import ROLES, Message
from .errors import EasyLLMError

if TYPE_CHECKING:
    from .runner import ModelRunner

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
    ) -> None:
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


class ModelServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: the runner, its name, the generation lock."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        runner: ModelRunner,
        model_name: str,
        *,
        quiet: bool = False,
    ) -> None:
        super().__init__(address, handler)
        self.runner, self.model_name, self.quiet = runner, model_name, quiet
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    """Routes requests to one method per endpoint; subclass it to change one route (tests do)."""

    server: ModelServer
    routes: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", "/v1/models"): "list_models",
        ("POST", "/v1/chat/completions"): "chat_completions",
    }

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def list_models(self) -> None:
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": self.server.model_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "easyllm",
                    }
                ],
            },
        )

    def chat_completions(self) -> None:
        request = parse_chat_request(self.read_json())
        if request["stream"]:
            self._stream(request)
            return
        runner = self.server.runner
        with self.server.lock:
            _seed(request)
            replies = runner.generate(
                [request["messages"]] * request["n"], return_details=True, **request["generate"]
            )
            prompt_tokens = len(runner.encoder.encode_prompt(request["messages"]))
        completion_tokens = sum(reply.generated_tokens for reply in replies)
        self.send_json(
            200,
            {
                **_envelope("chat.completion", self.server.model_name),
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": reply.text},
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                    for i, reply in enumerate(replies)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    # -- plumbing ------------------------------------------------------------------------------
    def read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object")
        return body

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, error: BadRequest) -> None:
        self.send_json(
            error.status,
            {
                "error": {
                    "message": str(error),
                    "type": error.kind,
                    "param": error.param,
                    "code": None,
                }
            },
        )

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _dispatch(self, method: str) -> None:
        route = self.routes.get((method, self.path.split("?", 1)[0].rstrip("/")))
        try:
            if route is None:
                known = ", ".join(f"{m} {p}" for m, p in self.routes)
                raise BadRequest(
                    f"No route {method} {self.path}; this server has {known}", status=404
                )
            getattr(self, route)()
        except BadRequest as exc:
            self.send_error_json(exc)
        except (EasyLLMError, ValueError) as exc:  # e.g. a prompt the template cannot render
            self.send_error_json(BadRequest(str(exc)))
        except Exception as exc:  # noqa: BLE001 (keep serving; the client sees what went wrong)
            self.send_error_json(
                BadRequest(f"{type(exc).__name__}: {exc}", status=500, kind="server_error")
            )

    def _stream(self, request: dict[str, Any]) -> None:
        """Server-sent events: a role chunk, one chunk per piece of text, a finish chunk, [DONE]."""
        envelope = _envelope("chat.completion.chunk", self.server.model_name)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()

        runner, options = self.server.runner, request["generate"]
        with self.server.lock:
            _seed(request)
            send({"role": "assistant", "content": ""})
            text = ""
            for piece in runner.stream(request["messages"], **options):
                text += piece
                send({"content": piece})
            # The streamer gives text only: a reply that re-encodes to the limit was cut off.
            produced = len(runner.tokenizer.encode(text, add_special_tokens=False))
        send({}, "length" if produced >= options["max_new_tokens"] else "stop")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def parse_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a chat-completions body: messages, n, stream, seed and generate() options."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "'messages' must be a non-empty list of {role, content} objects", param="messages"
        )
    clean = [_message(message, n) for n, message in enumerate(messages)]
    if clean[-1]["role"] == "assistant":
        raise BadRequest(
            "The last message is the assistant's: end with a user message to get a reply",
            param="messages",
        )
    max_tokens = _number(body, "max_completion_tokens", int) or _number(body, "max_tokens", int)
    n = _number(body, "n", int) or 1
    temperature = _number(body, "temperature", float)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of strings", param="stop")
    if (max_tokens is not None and max_tokens < 1) or n < 1 or (temperature or 0) < 0:
        raise BadRequest("max_tokens and n must be at least 1, temperature at least 0")
    stream = bool(body.get("stream"))
    if stream and n > 1:
        raise BadRequest("Streaming gives one reply: use n=1 with stream=true", param="n")
    options: dict[str, Any] = {"max_new_tokens": max_tokens or DEFAULT_MAX_TOKENS, "stop": stop}
    if temperature:  # 0 or absent: greedy, deterministic
        options["temperature"] = temperature
        top_p = _number(body, "top_p", float)
        if top_p is not None:
            options["top_p"] = top_p
    return {
        "messages": clean,
        "n": n,
        "stream": stream,
        "seed": _number(body, "seed", int),
        "generate": options,
    }


def make_server(
    runner: ModelRunner,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    handler: type[ChatHandler] = ChatHandler,
    quiet: bool = False,
) -> ModelServer:
    """A server bound to host:port (0: any free port), not yet serving; see `server.base_url`."""
    if runner.encoder is None or not runner.task.capabilities.generative:
        raise EasyLLMError(
            f"Only a generative model can be served; task '{runner.task_name}' is not one."
        )
    return ModelServer((host, port), handler, runner, model_name or runner.model_name, quiet=quiet)


def serve(
    runner: ModelRunner,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until Ctrl-C. Bind to 0.0.0.0 only on a network you trust: there is no login."""
    with make_server(runner, host, port, model_name=model_name) as server:
        announce(f"easyllm: serving {server.model_name} at {server.base_url} (Ctrl-C to stop)")
        with suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped, not an error
            server.serve_forever()


@contextmanager
def serve_in_background(
    runner: ModelRunner,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str | None = None,
    handler: type[ChatHandler] = ChatHandler,
) -> Iterator[str]:
    """Serve from a thread while the block runs and yield the base URL, e.g. http://127.0.0.1:53121/v1.

    >>> with serve_in_background(runner) as url:
    ...     easyllm.synthesize(prompts, teacher=easyllm.Endpoint(runner.model_name, base_url=url))
    """
    server = make_server(runner, host, port, model_name=model_name, handler=handler, quiet=True)
    thread = threading.Thread(target=server.serve_forever, name="easyllm-serve", daemon=True)
    thread.start()
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- helpers -----------------------------------------------------------------------------------
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


def _number(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and value != int(value))
    ):
        raise BadRequest(
            f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}",
            param=key,
        )
    return kind(value)


def _envelope(kind: str, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def _seed(request: dict[str, Any]) -> None:
    if request["seed"] is not None and "temperature" in request["generate"]:
        import torch

        torch.manual_seed(request["seed"])
