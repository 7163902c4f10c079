"""`easyllm serve`: an OpenAI-compatible chat API over a ModelRunner, used by the openai client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import openai
import pytest
from conftest import REPO
from test_synthesize import ANSWERS, taught_teacher

from easyllm import ModelRunner
from easyllm.eval.generation import cut_at_stop_stream
from easyllm.serve import Limits, serve_in_background


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model_dir) -> ModelRunner:
    return taught_teacher(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="module")
def client(teacher):
    with serve_in_background(teacher, model_name="taught") as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def post(client: openai.OpenAI, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        str(client.base_url).rstrip("/") + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_reply_is_what_generate_gives_with_its_finish_reason_and_usage(client, teacher):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
    ]
    response = client.chat.completions.create(model="anything", messages=messages, max_tokens=24)
    expected = teacher.generate(messages, max_new_tokens=24, return_details=True)
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason == "stop"
    assert response.model == "taught"
    assert response.usage.completion_tokens == expected.generated_tokens
    assert response.usage.prompt_tokens == len(teacher.encoder.encode_prompt(messages))
    assert (
        response.usage.total_tokens
        == response.usage.prompt_tokens + response.usage.completion_tokens
    )

    cut = client.chat.completions.create(model="taught", messages=messages, max_completion_tokens=2)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2
    assert [model.id for model in client.models.list()] == ["taught"]


def test_n_replies_sampled_at_a_temperature(client):
    response = client.chat.completions.create(
        model="taught",
        n=3,
        temperature=1.5,
        seed=1,
        max_tokens=8,
        messages=[{"role": "user", "content": "Who are you?"}],
    )
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert all(choice.finish_reason in ("stop", "length") for choice in response.choices)


def test_a_streamed_reply_is_the_same_reply_in_pieces(client):
    messages = [{"role": "user", "content": prompt} for prompt in list(ANSWERS)[1:2]]
    whole = client.chat.completions.create(
        model="taught", messages=messages, max_tokens=24
    ).choices[0]
    chunks = list(
        client.chat.completions.create(
            model="taught", messages=messages, max_tokens=24, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text.strip() == whole.message.content and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b"{not json", None, "not valid JSON"),
        (b'{"model": "m"}', "messages", "'messages' must be a non-empty list"),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0]", "role"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}',
            "max_tokens",
            "an integer",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": true}',
            "n",
            "Streaming",
        ),
        (
            (
                b'{"messages": [{"role": "user", "content": "hi"}, '
                b'{"role": "assistant", "content": "x"}]}'
            ),
            "messages",
            "end with a user message",
        ),
    ],
)
def test_a_bad_request_gets_400_and_an_openai_style_error(client, body, param, says):
    status, error = post(client, "/chat/completions", body)
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["param"] == param
    assert says in error["error"]["message"]


def test_errors_reach_the_openai_client_as_its_own_exceptions(client):
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a number"):
        client.chat.completions.create(
            model="taught",
            messages=[{"role": "user", "content": "hi"}],
            temperature="hot",  # type: ignore[arg-type]
        )
    status, error = post(client, "/completions", b"{}")
    assert status == 404 and "POST /v1/chat/completions" in error["error"]["message"]


def test_cli_serve_answers_until_stopped_and_asks_for_the_api_key_in_the_environment(teacher):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "EASYLLM_API_KEY": "cli-key",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "easyllm.cli",
            "serve",
            teacher.model_name,
            "--port",
            "0",
            "--name",
            "cli-model",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert "serving cli-model at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="unused", max_retries=0).models.list()
        reply = openai.OpenAI(base_url=url, api_key="cli-key").chat.completions.create(
            model="cli-model",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
        )
        assert reply.choices[0].message.content == teacher.generate(
            "What is the capital of France?", max_new_tokens=24
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- hardening: every refusal is an OpenAI-style error, and no request can stall the server -----
HI = [{"role": "user", "content": "hi"}]


def raw(url: str, request: bytes, timeout: float = 20) -> tuple[int, bytes]:
    """Send bytes to the server as they are (headers included); the status and the body back."""
    address = urllib.parse.urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def http(
    url: str, body: bytes | str, headers: dict[str, str] | None = None, path="/chat/completions"
):
    """A POST with the given headers (Host, Content-Type and Content-Length unless given)."""
    body = body.encode() if isinstance(body, str) else body
    address = urllib.parse.urlsplit(url)
    fields = {
        "Host": f"127.0.0.1:{address.port}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    status, reply = raw(url, f"POST /v1{path} HTTP/1.1\r\n{head}\r\n".encode() + body)
    return status, reply


@pytest.fixture(scope="module")
def plain(tiny_model_dir) -> ModelRunner:
    """The random tiny model: its replies mean nothing, but it answers at once."""
    return ModelRunner(tiny_model_dir)


@pytest.fixture(scope="module")
def url(plain):
    with serve_in_background(plain, limits=Limits(timeout=5, queue_timeout=20)) as url:
        yield url


def chat(**fields) -> str:
    return json.dumps({"messages": HI, **fields})


def test_a_generation_that_fails_in_a_stream_ends_the_stream_and_frees_the_server(
    url, plain, monkeypatch
):
    def fails(**kwargs):
        raise RuntimeError("CUDA out of memory (secret details)")

    monkeypatch.setattr(plain.model, "generate", fails)
    status, body = http(url, chat(stream=True, max_tokens=4))  # before: hung for ever
    events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and b"HTTP/1" not in body  # no second status line inside the stream
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: ") :])["error"]
    assert error["type"] == "server_error" and "secret" not in error["message"]
    status, body = http(url, chat(max_tokens=4))
    assert status == 500 and b"secret" not in body
    monkeypatch.undo()
    assert http(url, chat(max_tokens=4))[0] == 200  # the lock was given back


def test_stream_reply_raises_what_generate_raised_instead_of_waiting(plain, monkeypatch):
    monkeypatch.setattr(plain.model, "generate", lambda **kw: 1 / 0)
    result: list[BaseException] = []

    def read() -> None:
        try:
            list(plain.stream("hi", max_new_tokens=4))
        except ZeroDivisionError as exc:
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive() and result


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"top_p": 5, "temperature": 1}, "top_p", "at most 1"),
        ({"top_p": 0}, "top_p", "above 0"),
        ({"temperature": 3}, "temperature", "at most 2"),
        ({"temperature": -1}, "temperature", "at least 0"),
        ({"n": 0}, "n", "at least 1"),
        ({"n": 100}, "n", "at most 8"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "at least 1"),
        ({"max_tokens": 10**6}, "max_tokens", "at most 4096"),
        ({"max_tokens": 4000}, "max_tokens", "does not fit"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": ""}, "stop", "non-empty"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tool calls"),
        ({"response_format": {"type": "json_object"}}, "response_format", "plain text"),
        ({"messages": [{"role": "user", "content": "hi " * 600}]}, "messages", "at most 511"),
    ],
)
def test_out_of_range_values_and_unsupported_fields_get_400(url, fields, param, says):
    status, body = http(url, chat(**fields))
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == param and says in error["message"], error


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ("{}", {"Content-Length": "1000000000000"}, 413, "at most"),
        ("{}", {"Content-Length": "-1"}, 400, "whole number"),
        ("{}", {"Content-Length": None}, 411, "Content-Length"),
        ("{}", {"Content-Length": None, "Transfer-Encoding": "chunked"}, 411, "chunked"),
        (chat(), {"Content-Type": "text/plain"}, 415, "application/json"),
        ('{"messages": Infinity}', {}, 400, "not valid JSON"),
        ('{"temperature": 1e999}', {}, 400, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, {}, 400, "nested too deeply"),
        (chat(), {"Host": "evil.example:8000"}, 403, "evil.example"),
        (chat(), {"Origin": "http://evil.example"}, 403, "evil.example"),
        (chat(), {"Origin": "null"}, 403, "null"),
    ],
)
def test_bodies_and_headers_the_server_refuses(url, body, headers, status, says):
    got, reply = http(url, body, headers)
    assert got == status and says in json.loads(reply)["error"]["message"], reply


def test_local_names_and_allowed_hosts_are_answered(plain):
    with serve_in_background(plain, allowed_hosts=["box.lan"]) as url:
        for host in ("localhost", "127.0.0.1", "[::1]", "box.lan"):
            headers = {"Host": f"{host}:1", "Origin": f"http://{host}:3000"}
            assert http(url, chat(max_tokens=1), headers)[0] == 200, host
        assert http(url, chat(max_tokens=1), {"Host": "other.lan"})[0] == 403


def test_a_template_that_cannot_render_is_a_400_that_says_so(url, plain, monkeypatch):
    import jinja2

    def refuse(messages):
        raise jinja2.TemplateError("Conversation roles must alternate")

    monkeypatch.setattr(plain.encoder, "encode_prompt", refuse)
    status, body = http(url, chat())
    error = json.loads(body)["error"]
    assert status == 400 and "roles must alternate" in error["message"] and error["param"]


def test_an_api_key_is_required_when_set_and_never_logged(plain, capsys):
    with serve_in_background(plain, api_key="s3cret-key") as url:
        assert http(url, chat(max_tokens=1))[0] == 401
        assert http(url, chat(max_tokens=1), {"Authorization": "Bearer wrong"})[0] == 401
        good = {"Authorization": "Bearer s3cret-key"}
        assert http(url, chat(max_tokens=1), good)[0] == 200
        assert raw(url, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 401
        client = openai.OpenAI(base_url=url, api_key="s3cret-key", max_retries=0)
        assert [model.id for model in client.models.list()] == [plain.model_name]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err


def test_idle_and_slow_clients_are_dropped_and_connections_are_capped(plain):
    limits = Limits(timeout=0.5, max_connections=2)
    with serve_in_background(plain, limits=limits) as url:
        address = urllib.parse.urlsplit(url)
        idle = [socket.create_connection((address.hostname, address.port)) for _ in range(2)]
        time.sleep(0.2)
        status, body = raw(url, b"GET /v1/models HTTP/1.1\r\n\r\n", timeout=5)
        assert status == 503 and b"Too many" in body  # answered at once, not queued
        for sock in idle:  # the server hangs up on clients that send nothing
            sock.settimeout(5)
            assert sock.recv(100) == b""
            sock.close()
        started = time.monotonic()
        status, _ = raw(url, _head(address.port, 100) + b"{", timeout=10)  # 1 byte of 100 sent
        assert status == 408 and time.monotonic() - started < 5


def _head(port: int, length: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_stops_its_generation(plain, monkeypatch, stream):
    produced: list[int] = []
    generate, forward = plain.model.generate, plain.model.forward

    def counting(**kwargs):
        kwargs["min_new_tokens"] = kwargs["max_new_tokens"]  # no early end-of-turn
        output = generate(**kwargs)
        produced.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    def slow(*args, **kwargs):
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(plain.model, "generate", counting)
    monkeypatch.setattr(plain.model, "forward", slow)
    with serve_in_background(plain) as url:
        address = urllib.parse.urlsplit(url)
        body = chat(stream=stream, max_tokens=400).encode()
        sock = socket.create_connection((address.hostname, address.port), timeout=10)
        sock.sendall(_head(address.port, len(body)) + body)
        if stream:
            assert sock.recv(12) == b"HTTP/1.0 200"
        else:
            time.sleep(0.3)  # generating
        sock.close()  # before: the lock was held for all 400 tokens
        started = time.monotonic()
        assert http(url, chat(max_tokens=1))[0] == 200
        assert time.monotonic() - started < 3
    assert produced[0] < 200, produced


def test_stop_strings_are_cut_from_streamed_text_too(client):
    messages = [{"role": "user", "content": "Name? Answer briefly."}]
    whole = client.chat.completions.create(
        model="taught", messages=messages, max_tokens=24, stop=[" AI"]
    )
    chunks = client.chat.completions.create(
        model="taught", messages=messages, max_tokens=24, stop=[" AI"], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert whole.choices[0].message.content == "Lumen, an" == text.strip()


def test_cut_at_stop_stream_holds_back_what_may_begin_a_stop_string():
    cancel = threading.Event()
    pieces = ["Hel", "lo. U", "s", "er: hi"]
    assert list(cut_at_stop_stream(pieces, ["User:"], cancel)) == ["Hel", "lo. "]
    assert cancel.is_set()  # generation is told to stop
    assert list(cut_at_stop_stream(["a", "b"], ["bc"])) == ["a", "b"]
    assert list(cut_at_stop_stream(["a", "b"], None)) == ["a", "b"]
