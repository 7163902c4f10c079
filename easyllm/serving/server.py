"""The threaded HTTP server: a cap on open connections and the one lock around the model."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .guard import Guard
from .requests import BadRequest, Limits

if TYPE_CHECKING:
    from ..runner import ModelRunner

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n"
    b'{"error": {"message": "Too many open connections; retry later", '
    b'"type": "server_error", "param": null, "code": null}}'
)


class ClientGone(Exception):
    """The client closed the connection or stopped reading for `Limits.timeout` seconds."""


class ModelServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: runner, name, limits, guard, generation lock."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops bursts of connects (1 s SYN retries)

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        runner: ModelRunner,
        model_name: str,
        *,
        guard: Guard,
        limits: Limits,
        quiet: bool = False,
    ) -> None:
        super().__init__(address, handler)
        self.runner, self.model_name, self.quiet = runner, model_name, quiet
        self.guard, self.limits = guard, limits
        self.lock = threading.Lock()
        self.connections = threading.BoundedSemaphore(limits.max_connections)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):  # answer at once rather than queue
            with suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    @contextmanager
    def model_turn(self) -> Iterator[ModelRunner]:
        """The runner, once no other request is generating (503 after `queue_timeout`)."""
        if not self.lock.acquire(timeout=self.limits.queue_timeout):
            raise BadRequest(
                "The server is busy with other requests; retry later",
                status=503,
                kind="server_error",
            )
        try:
            yield self.runner
        finally:
            self.lock.release()


def context_length(model: Any) -> int:
    """The most tokens (prompt and reply) the model reads, from its config."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2**31 - 1  # unknown: only Limits.max_tokens bounds a reply


@contextmanager
def cancel_on_hangup(connection: Any, cancel: threading.Event) -> Iterator[None]:
    """Set `cancel` if the client closes `connection` while the block runs (a non-streamed reply).

    A request is read whole before it is answered, so the socket turns readable only when the
    client hangs up (recv gives b"") or sends more than it should (then watching stops).
    """
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                readable, _, _ = select.select([connection], [], [], 0.1)
                if readable:
                    if connection.recv(1, socket.MSG_PEEK) == b"":
                        cancel.set()
                    return
            except (OSError, ValueError):  # closed under us: nobody waits for the reply
                cancel.set()
                return

    watcher = threading.Thread(target=watch, name="easyllm-hangup", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
