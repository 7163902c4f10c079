"""A bounded load on 127.0.0.1: concurrent clients, streamed and not, some hanging up, some bad.

Every well-formed request must be answered, none may hang, and the server must still answer
afterwards. Bounded: 8 clients x 20 requests of at most 12 tokens, every socket with a timeout,
the whole run with a deadline.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
from test_serve import HI, _head, chat, http

from easyllm import ModelRunner
from easyllm.serve import Limits, serve_in_background

CLIENTS, REQUESTS, DEADLINE_S = 8, 20, 50
MALFORMED = [
    ("{not json", {}),
    (chat(top_p=5, temperature=1), {}),
    (chat(n=0), {}),
    (chat(), {"Content-Type": "text/plain"}),
    (chat(), {"Host": "evil.example"}),
    ("{}", {"Content-Length": "1000000000000"}),
]


@pytest.fixture(scope="module")
def url(tiny_model_dir):
    limits = Limits(timeout=5, queue_timeout=DEADLINE_S, max_connections=64)
    with serve_in_background(ModelRunner(tiny_model_dir), limits=limits) as url:
        yield url


def one_request(url: str, kind: str, rng: random.Random) -> tuple[str, int, bool]:
    """(kind, status, whether the answer was complete) for one request of the given kind."""
    tokens = rng.randint(1, 12)
    if kind == "chat":
        status, body = http(url, chat(max_tokens=tokens, n=rng.choice([1, 2])))
        return kind, status, status == 200 and bool(json.loads(body)["choices"])
    if kind == "stream":
        status, body = http(url, chat(max_tokens=tokens, stream=True))
        return kind, status, status == 200 and body.rstrip().endswith(b"data: [DONE]")
    if kind == "hang-up":  # reads the status line of a stream, then goes away
        address = urllib.parse.urlsplit(url)
        body = json.dumps({"messages": HI, "max_tokens": 12, "stream": True}).encode()
        with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
            sock.sendall(_head(address.port, len(body)) + body)
            return kind, int(sock.recv(64).split()[1]), True
    text, headers = rng.choice(MALFORMED)
    status, body = http(url, text, headers)
    return kind, status, 400 <= status < 500 and "error" in json.loads(body)


def client(url: str, seed: int) -> list[tuple[str, int, bool]]:
    rng = random.Random(seed)
    kinds = rng.choices(["chat", "stream", "hang-up", "malformed"], [4, 3, 1, 2], k=REQUESTS)
    return [one_request(url, kind, rng) for kind in kinds]


def test_concurrent_clients_are_all_answered_and_the_server_keeps_answering(url):
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, url, seed) for seed in range(CLIENTS)]
        done, not_done = wait(futures, timeout=DEADLINE_S)
        assert not not_done, f"{len(not_done)} clients still waiting after {DEADLINE_S} s"
    results = [result for future in done for result in future.result()]
    assert len(results) == CLIENTS * REQUESTS
    wrong = [r for r in results if not r[2] or (r[0] != "malformed" and r[1] != 200)]
    assert not wrong, wrong
    assert {kind for kind, _, _ in results} == {"chat", "stream", "hang-up", "malformed"}
    assert http(url, chat(max_tokens=2))[0] == 200  # still answering, the lock given back
    assert time.monotonic() - started < DEADLINE_S + 5
