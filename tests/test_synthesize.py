"""synthesize(): a teacher answers prompts; kept answers become load_data rows, the rest rejects.

The local teacher is the tiny model taught four short answers (so it ends its turns); the
endpoint teacher is that same model behind `easyllm serve`, called with the real openai client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import REPO

from easyllm import ConfigError, DataError, Endpoint, ModelRunner, synthesize
from easyllm.cli import main
from easyllm.eval.generation import Reply
from easyllm.serve import ChatHandler, serve_in_background
from easyllm.synthesis import TeacherError
from easyllm.synthesis.inputs import job_key

ANSWERS = {
    "Who are you?": "I am Lumen.",
    "What is the capital of France?": "Paris.",
    "Translate this sentence into French.": "The fox jumps.",
    "Name? Answer briefly.": "Lumen, an AI assistant.",
}
PROMPTS = [*ANSWERS, "Hello!", "The quick brown fox?"]  # the last two: answers the teacher repeats


def taught_teacher(tmp_path_factory, tiny_model_dir) -> ModelRunner:
    """The tiny model trained until it gives ANSWERS and ends its turn; trained once per session."""
    folder = tmp_path_factory.getbasetemp() / "taught-teacher"
    if not (folder / "easyllm.json").is_file():
        runner = ModelRunner(tiny_model_dir)
        runner.load_data(
            [{"prompt": p, "completion": a} for p, a in ANSWERS.items()] * 4, val_size=0
        )
        runner.train(
            method="full",
            max_steps=80,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            warmup_steps=0,
            output_dir=str(folder),
            disable_tqdm=True,
        )
    return ModelRunner.load(folder)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model_dir) -> ModelRunner:
    return taught_teacher(tmp_path_factory, tiny_model_dir)


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Scripted:
    """A teacher with given replies (to test the rules on known answers); records what it is asked.

    `stop_after` raises KeyboardInterrupt after that many answers, as Ctrl-C in a long run would.
    """

    name = "scripted"

    def __init__(self, replies: dict[str, Reply], stop_after: int | None = None) -> None:
        self.replies, self.stop_after, self.asked = replies, stop_after, []

    def answer(
        self, prompts: Sequence[str], *, system: str | None, max_new_tokens: int, **sampling: Any
    ) -> Iterator[tuple[int, Reply]]:
        for index, prompt in enumerate(prompts):
            if self.stop_after is not None and len(self.asked) == self.stop_after:
                raise KeyboardInterrupt
            self.asked.append(prompt)
            yield index, self.replies[prompt]


# -- a local teacher -----------------------------------------------------------------------------
def test_local_teacher_rows_are_what_load_data_reads(teacher, tiny_model_dir, tmp_path):
    out = tmp_path / "answers.jsonl"
    path = synthesize(
        PROMPTS,
        teacher,
        output=out,
        system="Answer briefly.",
        max_new_tokens=24,
        batch_size=4,
        progress=False,
    )
    assert path == out
    direct = teacher.generate(
        PROMPTS, system="Answer briefly.", max_new_tokens=24, return_details=True
    )
    expected = {p: r.text for p, r in zip(PROMPTS, direct) if r.finish_reason == "stop" and r.text}
    kept = rows(out)
    assert kept, "the taught teacher should end some answers by itself"
    for row in kept:
        system, user, reply = row["messages"]
        assert system == {"role": "system", "content": "Answer briefly."}
        assert reply["content"] == expected[user["content"]]
        assert row["teacher"] == teacher.model_name
        assert row["key"] == job_key("Answer briefly.", user["content"], 0)
    # Each distinct answer is kept once; every other prompt is in the rejects, with its reason.
    assert (
        len({row["messages"][2]["content"] for row in kept})
        == len(kept)
        == len(set(expected.values()))
    )
    rejects = out.with_name("answers.rejects.jsonl")
    rejected = rows(rejects) if rejects.exists() else []
    assert sorted(
        [row["messages"][1]["content"] for row in kept] + [r["prompt"] for r in rejected]
    ) == sorted(PROMPTS)
    assert all(
        r["reason"] == ("truncated" if r["finish_reason"] == "length" else "duplicate")
        for r in rejected
    )

    report = ModelRunner(tiny_model_dir).load_data(out, val_size=0)
    assert report.train_examples == len(kept)


def test_local_teacher_answers_cut_off_at_the_limit_are_dropped(teacher, tmp_path):
    out = tmp_path / "short.jsonl"
    synthesize(list(ANSWERS), teacher, output=out, max_new_tokens=2, progress=False)
    assert not out.read_text()  # every taught answer needs more than 2 tokens
    rejected = rows(tmp_path / "short.rejects.jsonl")
    assert [r["reason"] for r in rejected] == ["truncated"] * len(ANSWERS)
    assert all(r["finish_reason"] == "length" for r in rejected)
    summary = json.loads((tmp_path / "short.summary.json").read_text())
    assert (
        summary["kept"] == 0
        and summary["dropped"] == {"truncated": len(ANSWERS)}
        and summary["finished"]
    )


# -- filters and the summary ---------------------------------------------------------------------
def test_filters_drop_what_they_should_and_the_summary_counts_match(tmp_path, capsys):
    replies = {
        "a": Reply("A good, complete answer.", "stop", 6),
        "b": Reply("   ", "stop", 1),  # empty
        "c": Reply("An answer that was cut", "length", 8),  # truncated
        "d": Reply("a  GOOD, complete\nanswer.", "stop", 6),  # duplicate of a
        "e": Reply("Hm.", "stop", 2),  # too short
        "f": Reply("x" * 80, "stop", 20),  # too long
        "g": Reply("As an AI, I cannot say.", "stop", 7),  # refused by keep
        "h": Reply("Another fine answer here.", "stop", 6),
    }
    expected = {
        "b": "empty",
        "c": "truncated",
        "d": "duplicate",
        "e": "too_short",
        "f": "too_long",
        "g": "rejected_by_keep",
    }
    out = tmp_path / "f.jsonl"
    synthesize(
        list(replies),
        Scripted(replies),
        output=out,
        min_chars=5,
        max_chars=60,
        keep=lambda prompt, answer: "As an AI" not in answer,
        progress=False,
    )
    assert [row["messages"][0]["content"] for row in rows(out)] == ["a", "h"]
    rejected = rows(tmp_path / "f.rejects.jsonl")
    assert {r["prompt"]: r["reason"] for r in rejected} == expected
    summary = json.loads((tmp_path / "f.summary.json").read_text())
    assert summary["dropped"] == dict(Counter(r["reason"] for r in rejected))
    assert summary["kept"] == summary["total_kept"] == 2
    printed = capsys.readouterr().out
    assert "kept 2 of 8 answers from scripted" in printed and "1 duplicate" in printed


def test_bad_settings_are_refused_before_anything_is_asked(tmp_path):
    scripted = Scripted({})
    with pytest.raises(ConfigError, match="temperature"):
        synthesize(["a"], scripted, output=tmp_path / "x.jsonl", n=3)
    with pytest.raises(ConfigError, match="min_chars=50 is more than max_chars=10"):
        synthesize(["a"], scripted, output=tmp_path / "x.jsonl", min_chars=50, max_chars=10)
    with pytest.raises(ConfigError, match=r"\*\.jsonl"):
        synthesize(["a"], scripted, output=tmp_path / "x.csv")
    assert scripted.asked == []


def test_n_samples_are_keyed_apart(tmp_path):
    out = tmp_path / "n.jsonl"
    synthesize(
        ["q", "r"],
        Scripted({"q": Reply("one", "stop", 1), "r": Reply("two", "stop", 1)}),
        output=out,
        n=2,
        temperature=0.7,
        progress=False,
    )
    kept, rejected = rows(out), rows(tmp_path / "n.rejects.jsonl")
    assert [row["key"] for row in kept] == [job_key(None, p, 0) for p in ("q", "r")]
    assert [(r["key"], r["reason"]) for r in rejected] == [
        (job_key(None, p, 1), "duplicate") for p in ("q", "r")
    ]


# -- resume ------------------------------------------------------------------------------------
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    prompts = [f"p{i}" for i in range(6)]
    replies = {p: Reply(f"answer to {p}", "stop", 3) for p in prompts} | {
        "p1": Reply("", "stop", 0)
    }
    out = tmp_path / "r.jsonl"
    first = Scripted(replies, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        synthesize(prompts, first, output=out, progress=False)
    assert first.asked == prompts[:3]
    assert not json.loads((tmp_path / "r.summary.json").read_text())["finished"]
    with out.open("a") as handle:  # killed while writing the next row: a torn last line
        handle.write('{"messages": [{"role": "user", "content": "p3"}, {"role": "assi')

    second = Scripted(replies)
    synthesize(prompts, second, output=out, progress=False)
    assert second.asked == prompts[3:]  # p1, dropped as empty, counts as answered too
    kept = rows(out)
    assert [row["messages"][0]["content"] for row in kept] == ["p0", "p2", "p3", "p4", "p5"]
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["skipped"] == 3 and summary["kept"] == 3 and summary["total_kept"] == 5

    third = Scripted(replies)
    synthesize(prompts + ["p0"], third, output=out, progress=False)
    assert third.asked == [] and len(rows(out)) == 5


def test_a_duplicate_of_an_earlier_runs_answer_is_dropped(tmp_path):
    out = tmp_path / "d.jsonl"
    synthesize(["a"], Scripted({"a": Reply("Same answer.", "stop", 2)}), output=out, progress=False)
    synthesize(
        ["a", "b"], Scripted({"b": Reply("same   answer.", "stop", 2)}), output=out, progress=False
    )
    assert [r["reason"] for r in rows(tmp_path / "d.rejects.jsonl")] == ["duplicate"]


def test_another_teacher_cannot_append_to_the_file(tmp_path):
    out = tmp_path / "t.jsonl"
    synthesize(["a"], Scripted({"a": Reply("x y z", "stop", 3)}), output=out, progress=False)
    other = Scripted({})
    other.name = "other"
    with pytest.raises(ConfigError, match=r"holds answers from \['scripted'\]"):
        synthesize(["a"], other, output=out, progress=False)


# -- inputs --------------------------------------------------------------------------------------
def test_inputs_from_files_and_bad_rows_named_by_line(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"instruction": "Translate", "input": "hello"}\n{"question": "Why?"}\n')
    csv = tmp_path / "in.csv"
    csv.write_text("id,query\n1,First?\n2,Second?\n")
    replies = {
        "Translate\n\nhello": Reply("bonjour", "stop", 2),
        "Why?": Reply("Because.", "stop", 2),
        "First?": Reply("one", "stop", 1),
        "Second?": Reply("two", "stop", 1),
    }
    scripted = Scripted(replies)
    synthesize(jsonl, scripted, output=tmp_path / "a.jsonl", progress=False)
    synthesize(csv, scripted, output=tmp_path / "b.jsonl", column="query", progress=False)
    assert scripted.asked == list(replies)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"answer": "no prompt"}\n{"prompt": ""}\nnot json\n')
    with pytest.raises(DataError) as error:
        synthesize(bad, Scripted({}), output=tmp_path / "c.jsonl")
    message = str(error.value)
    assert "3 problem(s)" in message
    for line in (2, 3, 4):
        assert f"{bad}:{line}:" in message
    assert "pass column=" in message


# -- an OpenAI-compatible endpoint ---------------------------------------------------------------
def test_endpoint_teacher_gives_the_same_rows_as_the_local_one(teacher, tmp_path):
    local = synthesize(
        PROMPTS, teacher, output=tmp_path / "local.jsonl", max_new_tokens=24, progress=False
    )
    with serve_in_background(teacher, model_name="taught") as url:
        remote = synthesize(
            PROMPTS,
            Endpoint("taught", base_url=url, concurrency=3),
            max_new_tokens=24,
            output=tmp_path / "remote.jsonl",
            progress=False,
        )
    by_key = {row["key"]: row for row in rows(local)}
    remote_rows = rows(remote)
    assert remote_rows and {row["key"] for row in remote_rows} == set(by_key)
    for row in remote_rows:
        assert row["teacher"] == "taught"
        assert row["messages"] == by_key[row["key"]]["messages"]


class Flaky(ChatHandler):
    """Answers 429, then 500, then 429 before serving; records the API key each request carried."""

    failures: ClassVar[list[int]] = [429, 500, 429]
    seen: ClassVar[list[tuple[int | None, str | None]]] = []

    def do_POST(self) -> None:
        status = self.failures.pop(0) if self.failures else None
        self.seen.append((status, self.headers.get("Authorization")))
        if status is None:
            return super().do_POST()
        self.send_json(
            status,
            {"error": {"message": "busy", "type": "server_error", "param": None, "code": None}},
        )
        return None


def test_endpoint_retries_with_backoff_and_sends_the_key_from_the_environment(
    teacher, tmp_path, monkeypatch
):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-test-secret")
    with serve_in_background(teacher, handler=Flaky) as url:
        endpoint = Endpoint(
            "taught", base_url=url, api_key_env="MY_TEACHER_KEY", concurrency=1, max_retries=3
        )
        out = synthesize(
            list(ANSWERS), endpoint, output=tmp_path / "e.jsonl", max_new_tokens=24, progress=False
        )
    assert [status for status, _ in Flaky.seen[:4]] == [429, 500, 429, None]
    assert {key for _, key in Flaky.seen} == {"Bearer sk-test-secret"}
    assert len(Flaky.seen) == len(ANSWERS) + 3
    written = "".join(p.read_text() for p in tmp_path.iterdir())
    assert "sk-test-secret" not in written and "sk-test-secret" not in repr(endpoint)
    rejects = tmp_path / "e.rejects.jsonl"
    assert len(rows(out)) + len(rows(rejects) if rejects.exists() else []) == len(ANSWERS)


class Broken(ChatHandler):
    """Serves `healthy` requests, then answers 500 to everything."""

    healthy = 2

    def do_POST(self) -> None:
        if Broken.healthy > 0:
            Broken.healthy -= 1
            return super().do_POST()
        self.send_json(
            500, {"error": {"message": "down", "type": "server_error", "param": None, "code": None}}
        )
        return None


def test_an_endpoint_that_keeps_failing_stops_the_run_and_a_rerun_resumes(teacher, tmp_path):
    out = tmp_path / "b.jsonl"
    prompts = list(ANSWERS)
    with (
        serve_in_background(teacher, handler=Broken) as url,
        pytest.raises(TeacherError, match="HTTP 500"),
    ):
        synthesize(
            prompts,
            Endpoint("t", base_url=url, concurrency=1, max_retries=1),
            output=out,
            max_new_tokens=24,
            progress=False,
        )
    rejects = tmp_path / "b.rejects.jsonl"
    answered = len(rows(out)) + (len(rows(rejects)) if rejects.exists() else 0)
    assert answered == 2
    with serve_in_background(teacher) as url:
        synthesize(
            prompts, Endpoint("t", base_url=url), output=out, max_new_tokens=24, progress=False
        )
    summary = json.loads((tmp_path / "b.summary.json").read_text())
    assert summary["skipped"] == 2 and summary["kept"] + sum(summary["dropped"].values()) == 2


def test_endpoint_without_the_openai_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openai", None)
    with pytest.raises(ImportError, match=r'pip install "easyllm-sdk\[teacher\]"'):
        Endpoint("m", base_url="http://127.0.0.1:9/v1").client()


# -- the command line ----------------------------------------------------------------------------
def test_cli_synthesize_with_a_local_teacher_and_an_endpoint(teacher, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(ANSWERS) + "\n")
    teacher_dir = str(teacher.model_name)  # the taught teacher's run folder

    def cli(*teacher_options: str, output: str) -> int:
        options = ["--output", str(tmp_path / output), "--max-new-tokens", "24"]
        return main(["synthesize", str(prompts), *teacher_options, *options])

    assert cli("--teacher", teacher_dir, output="l.jsonl") == 0
    with serve_in_background(teacher) as url:
        assert cli("--endpoint", url, "--endpoint-model", "x", output="r.jsonl") == 0
    local, remote = (
        {r["key"]: r["messages"] for r in rows(tmp_path / name)} for name in ("l.jsonl", "r.jsonl")
    )
    assert local == remote and len(local) == len(ANSWERS)  # endpoint answers arrive in any order
    out = capsys.readouterr().out
    assert f"Training rows in {tmp_path / 'l.jsonl'}" in out
    assert main(["synthesize", str(prompts), "--endpoint", url]) == 2
    assert "--endpoint needs --endpoint-model" in capsys.readouterr().err


# -- the example, end to end with the real built-in model ----------------------------------------
@pytest.mark.slow
def test_distill_example_moves_the_student_toward_the_teacher(tmp_path):
    """Runs examples/distill.py as a user would and reads the before/after lines it prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "distill.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = {}
    for line in done.stdout.splitlines():
        name, _, values = line.partition(": before ")
        if values:
            before, after = values.split(", after ")
            scores[name] = (float(before), float(after))
    # the teacher's answers became likelier, and the student's replies closer to them
    assert scores["eval_loss"][1] < scores["eval_loss"][0] - 1.0
    assert scores["rouge_l"][1] > scores["rouge_l"][0]
    written = tmp_path / "easyllm-data" / "distill"
    summary = json.loads((written / "answers.summary.json").read_text())
    assert summary["finished"] and summary["kept"] == len(rows(written / "answers.jsonl"))


def test_the_environment_key_goes_to_openai_only_and_never_over_plain_http(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("MY_KEY", "sk-mine")
    assert Endpoint("gpt").key() == "sk-openai-secret"  # OpenAI itself
    assert Endpoint("m", base_url="https://other.example/v1").key() == "EMPTY"
    assert (
        Endpoint("m", base_url="https://other.example/v1", api_key_env="MY_KEY").key() == "sk-mine"
    )
    assert Endpoint("m", base_url="http://127.0.0.1:8000/v1", api_key="k").key() == "k"
    with pytest.raises(ConfigError, match="unencrypted to another machine"):
        Endpoint("m", base_url="http://remote.example/v1", api_key_env="MY_KEY").key()


def test_an_answer_cut_by_a_content_filter_is_rejected():
    from easyllm.synthesis.filters import AnswerFilter

    cut = Reply("Here is how to", "content_filter", 5)
    assert AnswerFilter().reason("prompt", cut) == "content_filter"
    assert AnswerFilter().reason("prompt", Reply("Here is how to", "stop", 5)) is None
