"""Who may call the server and how a body is read: API key, Host and Origin, JSON within limits.

A web page the user visits can send requests to 127.0.0.1 (a form posts text/plain; DNS
rebinding points a foreign name at 127.0.0.1). Checking the Host and Origin headers against
the names this server answers to, and taking JSON bodies only, refuses both.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from email.message import Message as Headers
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from .requests import BadRequest

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_ANY_ADDRESS = {"", "0.0.0.0", "::"}


class Guard:
    """The checks every request passes before it is routed: 403 (host), 401 (key), 415 (type)."""

    def __init__(self, api_key: str | None, bound_host: str, allowed_hosts: Iterable[str]) -> None:
        self.api_key = api_key or None
        names = {_bare(name) for name in (*allowed_hosts, bound_host)} - _ANY_ADDRESS
        self.hosts = frozenset(LOCAL_HOSTS | names)

    def __repr__(self) -> str:  # never show the key
        return f"Guard(api_key={'set' if self.api_key else None}, hosts={sorted(self.hosts)})"

    def check(self, method: str, headers: Headers) -> None:
        host = headers.get("Host")
        if host is not None and not self._allows(_host_of(host)):
            raise _forbidden(f"Host {host!r} is not one this server answers to")
        origin = headers.get("Origin")
        if origin is not None and not self._allows(urlsplit(origin).hostname or ""):
            raise _forbidden(f"Requests from the web page at {origin!r} are not allowed")
        if self.api_key is not None:
            given = headers.get("Authorization") or ""
            scheme, _, key = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                key.strip().encode(), self.api_key.encode()
            ):
                raise BadRequest(
                    "Missing or wrong API key: send 'Authorization: Bearer KEY'",
                    status=401,
                    kind="invalid_request_error",
                    code="invalid_api_key",
                )
        if method == "POST":
            kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise BadRequest(
                    f"The body must be JSON sent as 'Content-Type: application/json', not "
                    f"{kind or 'no type'!r}",
                    status=415,
                )

    def _allows(self, name: str) -> bool:
        return "*" in self.hosts or _bare(name) in self.hosts


def read_json(headers: Headers, body: BinaryIO, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, read with a checked Content-Length (411, 413 or 400)."""
    if headers.get("Transfer-Encoding"):
        raise BadRequest("Send the body with a Content-Length, not chunked", status=411)
    length_text = headers.get("Content-Length")
    if length_text is None:
        raise BadRequest("A POST needs a Content-Length header", status=411)
    if not length_text.strip().isdigit():
        raise BadRequest(f"Content-Length must be a whole number, got {length_text!r}")
    length = int(length_text)
    if length > max_bytes:
        raise BadRequest(
            f"The body is {length} bytes; this server takes at most {max_bytes}", status=413
        )
    try:
        data = body.read(length)
    except TimeoutError:  # a client that sends its body slowly holds a thread: not for long
        raise BadRequest("The body did not arrive in time", status=408) from None
    if len(data) < length:
        raise BadRequest(f"The body ended after {len(data)} of {length} bytes")
    try:
        value = json.loads(data or b"null", parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large")
    return value


def _host_of(header: str) -> str:
    header = header.strip()
    if header.startswith("["):  # [::1]:8000
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _bare(name: str) -> str:
    return name.strip().strip("[]").lower().rstrip(".")


def _forbidden(message: str) -> BadRequest:
    return BadRequest(
        f"{message}; add it with serve(..., allowed_hosts=[...]) if it should be",
        status=403,
        kind="permission_error",
    )
