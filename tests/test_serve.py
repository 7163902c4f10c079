"""`easyllm serve`: an OpenAI-compatible chat API over a ModelRunner, used by the openai client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest
from conftest import REPO
from test_synthesize import ANSWERS, taught_teacher

from easyllm import ModelRunner
from easyllm.serve import serve_in_background


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


def test_cli_serve_answers_until_stopped(teacher):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
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
        reply = openai.OpenAI(base_url=url, api_key="unused").chat.completions.create(
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
