"""The command line: train from flags or YAML, then generate, chat, eval and export a run."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import ClassVar

import pytest

from easyllm.cli import build_parser, main


class FakeRunner:
    """Records what the CLI asks of ModelRunner, without loading a model."""

    calls: ClassVar[list] = []
    replies: ClassVar[list] = []

    def __init__(self, model=None, **options):
        self.calls.append(("init", model, options))

    @classmethod
    def load(cls, path, **options):
        return cls(f"load:{path}", **options)

    def load_data(self, source, **options):
        self.calls.append(("load_data", source, options))

    def train(self, **options):
        self.calls.append(("train", options))
        return SimpleNamespace(metrics={}, output_dir=options.get("output_dir"))

    def generate(self, prompt, **options):
        return "fake reply"

    def stream(self, history, **options):
        self.calls.append(("stream", [dict(turn) for turn in history]))
        yield from self.replies.pop(0)()


@pytest.fixture
def fake_runner(monkeypatch):
    runner = type("Fake", (FakeRunner,), {"calls": [], "replies": []})
    monkeypatch.setattr("easyllm.runner.ModelRunner", runner)
    return runner


def fake_call(fake, name):
    return next(call for call in fake.calls if call[0] == name)


@pytest.fixture
def data_file(tmp_path, chats):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in chats) + "\n")
    return path


@pytest.fixture
def trained_run(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data_file),
            "--epochs",
            "1",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_train_from_flags_writes_a_run(capsys, trained_run):
    assert (trained_run / "adapter_model.safetensors").is_file()
    assert (trained_run / "metrics.json").is_file()
    assert f"Saved in {trained_run}" in capsys.readouterr().out


def test_train_from_yaml_and_unknown_keys(tmp_path, tiny_model_dir, data_file, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {data_file}\nmax_steps: 1\noutput_dir: {tmp_path / 'y'}\n"
        "val_size: 0\ndisable_tqdm: true\n"
    )
    assert main(["train", str(config)]) == 0
    assert (tmp_path / "y" / "easyllm.json").is_file()
    config.write_text(f"model: {tiny_model_dir}\ndata: {data_file}\nlearnign_rate: 0.1\n")
    assert main(["train", str(config)]) == 2
    error_lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("easyllm: error:")
    ]
    assert len(error_lines) == 1
    assert error_lines[0].startswith(
        "easyllm: error: Unknown setting(s): 'learnign_rate' (did you mean learning_rate"
    )


def test_generate_chat_and_export(trained_run, data_file, tmp_path, capsys, monkeypatch):
    assert (
        main(["generate", str(trained_run), "--prompt", "Who are you?", "--max-new-tokens", "4"])
        == 0
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n\n"))
    assert main(["chat", str(trained_run), "--max-new-tokens", "4"]) == 0
    assert main(["export", str(trained_run), "--merge", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_eval_prints_json_metrics(trained_run, data_file, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--data", str(data_file)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{") :])
    assert metrics["eval_examples"] == 12 and metrics["perplexity"] > 1
    assert 0 <= metrics["rouge_l"] <= 1 and 0 <= metrics["runaway_rate"] <= 1


def test_eval_compare_and_loss_only(trained_run, data_file, capsys):
    capsys.readouterr()
    options = ["--data", str(data_file), "--compare", "--max-samples", "2", "--max-new-tokens", "4"]
    assert main(["eval", str(trained_run), *options]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{") :])
    assert (
        metrics["generated_replies"] == 2
        and "base_rouge_l" in metrics
        and "base_eval_loss" in metrics
    )
    assert main(["eval", str(trained_run), "--data", str(data_file), "--no-generate"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{") :])
    assert "perplexity" in metrics and "rouge_l" not in metrics


@pytest.mark.parametrize(
    "command", ["train", "generate", "chat", "eval", "export", "serve", "synthesize"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0 and "usage: easyllm " + command in capsys.readouterr().out


def test_bad_input_is_a_one_line_error(tmp_path, data_file, capsys):
    assert main(["train", "--data", str(data_file), "--model", str(tmp_path / "nope")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("easyllm: error: Model folder not found") and error.count("\n") == 1


def test_flags_override_the_yaml_file(tmp_path, data_file, fake_runner):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: {data_file}\nnum_train_epochs: 3\noutput_dir: {tmp_path / 'from-yaml'}\n"
        "learning_rate: 1.0e-3\nval_size: 0.2\n"
    )
    flags = ["--epochs", "1", "--output-dir", str(tmp_path / "x"), "--val-size", "3"]
    assert main(["train", str(config), *flags]) == 0
    train = fake_call(fake_runner, "train")[1]
    assert train["num_train_epochs"] == 1.0 and train["output_dir"] == str(tmp_path / "x")
    assert train["learning_rate"] == 1e-3  # not given as a flag: the file's value stays
    assert fake_call(fake_runner, "load_data")[2] == {"val_size": 3}


def test_a_flag_overrides_the_yaml_file_in_a_real_run(tmp_path, tiny_model_dir, data_file):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {data_file}\nmax_steps: 1\n"
        f"output_dir: {tmp_path / 'from-yaml'}\ndisable_tqdm: true\n"
    )
    assert main(["train", str(config), "--output-dir", str(tmp_path / "x"), "--no-eval"]) == 0
    assert (tmp_path / "x" / "easyllm.json").is_file() and not (tmp_path / "from-yaml").exists()
    metrics = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert not any(key.startswith("eval_") for key in metrics)  # --no-eval: nothing held out


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("model: x\ndata: [a\n  b: c\n", "run.yaml:4:4: not valid YAML"),
        ("learning_rate: 5e-4\n", "learning_rate: '5e-4' in {config} is text, not a number. "),
        ("learnign_rate: 0.1\n", "Unknown setting(s): 'learnign_rate' (did you mean learning_rate"),
        ("num_train_epochs: 0\n", "num_train_epochs in {config}: '0': must be above 0"),
        ("bf16: 'no'\n", "bf16: 'no' in {config}: expected true or false."),
        ("val_size: 1.5\n", "val_size in {config}: '1.5': give a fraction in [0, 1)"),
        (None, "Config file not found: {config}"),
    ],
)
def test_bad_yaml_is_one_line_before_any_model_loads(
    yaml_text, expected, tmp_path, data_file, fake_runner, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    if yaml_text is not None:
        config.write_text(f"data: {data_file}\n{yaml_text}")
    assert main(["train", "run.yaml"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("easyllm: error: ") and error.count("\n") == 1
    assert expected.format(config="run.yaml") in error
    assert fake_runner.calls == []  # no model loaded, no run folder made


def test_tensorboard_missing_names_the_package(
    tmp_path, data_file, fake_runner, monkeypatch, capsys
):
    import importlib.util

    find_spec = importlib.util.find_spec
    hidden = {"tensorboard", "tensorboardX"}
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name in hidden else find_spec(name, *a)
    )
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {data_file}\nreport_to: [tensorboard]\n")
    assert main(["train", str(config)]) == 2
    assert "needs TensorBoard: pip install tensorboard" in capsys.readouterr().err
    assert fake_runner.calls == []


def test_5e_minus_4_says_how_to_write_it(tmp_path, data_file, fake_runner, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {data_file}\nlearning_rate: 5e-4\n")
    assert main(["train", str(config)]) == 2
    assert "write 5.0e-4 (unquoted)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--epochs", "0"], ["--max-steps", "1.5"], ["--learning-rate", "fast"], ["--columns", "q"]],
)
def test_bad_flags_are_one_line(flags, capsys, fake_runner):
    with pytest.raises(SystemExit) as done:
        main(["train", *flags])
    error = capsys.readouterr().err
    assert done.value.code == 2 and error.count("\n") == 1
    assert error.startswith(f"easyllm train: error: argument {flags[0]}")


def test_help_and_argument_errors_load_no_torch():
    script = (
        "import sys, contextlib, io\n"
        "import easyllm.cli\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        "    for argv in (['--help'], ['train', '--help'], ['train', '--epochs', '0']):\n"
        "        try: easyllm.cli.main(argv)\n"
        "        except SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'loaded'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = subprocess.run(
        [sys.executable, "-m", "easyllm.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0 and "usage: easyllm" in shown.stdout
    import easyllm
    from easyllm import ModelRunner  # the exports load on first use

    assert ModelRunner.__name__ == "ModelRunner" and "ModelRunner" in dir(easyllm)
    assert all(getattr(easyllm, name) is not None for name in easyllm.__all__)


def test_train_flags_follow_the_api(tmp_path, data_file, fake_runner, capsys):
    flags = [
        *("--data", str(data_file), "--model", "m", "--learning-rate", "1e-4"),
        *("--max-steps", "2", "--input-key", "q", "--output-key", "a"),
        *("--columns", "prompt=q,completion=a", "--trust-remote-code", "--no-eval"),
    ]
    assert main(["train", *flags]) == 0
    assert fake_call(fake_runner, "init") == ("init", "m", {"trust_remote_code": True})
    assert fake_call(fake_runner, "load_data")[2] == {
        "val_size": 0,
        "input_key": "q",
        "output_key": "a",
        "columns": {"prompt": "q", "completion": "a"},
    }
    assert fake_call(fake_runner, "train")[1] == {"learning_rate": 1e-4, "max_steps": 2}
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    from easyllm.cli_train import SETTINGS  # the one table the flags come from

    assert all(setting.option in shown for setting in SETTINGS) and "--val-size 0" in shown
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("easyllm 0.")


@pytest.mark.parametrize("command", ["generate", "chat", "eval", "export", "serve"])
def test_trust_remote_code_reaches_the_model(command, tmp_path, fake_runner, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    monkeypatch.setattr("easyllm.serve.serve", lambda *args, **kwargs: None)
    extra = {"generate": ["--prompt", "hi"], "eval": ["--data", "d"], "export": ["--merge", "o"]}
    FakeRunner.evaluate = FakeRunner.merge = lambda self, *args, **kwargs: {}
    try:
        main([command, str(tmp_path), "--trust-remote-code", *extra.get(command, [])])
    finally:
        del FakeRunner.evaluate, FakeRunner.merge
    assert fake_call(fake_runner, "init") == ("init", str(tmp_path), {"trust_remote_code": True})


def test_trust_remote_code_reaches_a_reloaded_run(tmp_path, fake_runner):
    from easyllm.records.folder import SAVE_INFO_FILE

    (tmp_path / SAVE_INFO_FILE).write_text("{}")
    assert main(["generate", str(tmp_path), "--prompt", "hi", "--trust-remote-code"]) == 0
    assert fake_call(fake_runner, "init") == (
        "init",
        f"load:{tmp_path}",
        {"trust_remote_code": True},
    )


def test_generate_and_chat_take_a_plain_model_folder(tiny_model_dir, capsys, monkeypatch):
    assert main(["generate", str(tiny_model_dir), "--prompt", "Hi", "--max-new-tokens", "2"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n\n"))
    assert main(["chat", str(tiny_model_dir), "--max-new-tokens", "2"]) == 0


def test_ctrl_c_stops_a_reply_and_keeps_the_chat(fake_runner, capsys, monkeypatch):
    def interrupted():
        yield "Hel"
        raise KeyboardInterrupt

    fake_runner.replies += [interrupted, lambda: iter(["Fine."])]
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nAgain\n\n"))
    try:
        code = main(["chat", "some-model"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during a reply ended the chat")
    assert code == 0
    second = [call[1] for call in fake_runner.calls if call[0] == "stream"][1]
    assert second == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hel"},
        {"role": "user", "content": "Again"},
    ]
    assert "Hel [stopped]\nFine.\n" in capsys.readouterr().out


def _read_until(fd: int, pattern: bytes, seen: bytearray, timeout: float = 120) -> bytes:
    """What a pseudo-terminal printed up to `pattern` (fails after `timeout` seconds)."""
    import os
    import select
    import time

    deadline = time.monotonic() + timeout
    while pattern not in seen:
        assert time.monotonic() < deadline, f"no {pattern!r} in {bytes(seen[-500:])!r}"
        if select.select([fd], [], [], 0.5)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the program ended
                pytest.fail(f"ended before {pattern!r}: {bytes(seen[-1500:])!r}")
    end = seen.index(pattern) + len(pattern)
    printed = bytes(seen[:end])
    del seen[:end]
    return printed


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_ctrl_c_in_a_terminal_stops_the_reply_not_the_chat(tiny_model_dir):
    import os
    import pty

    argv = [sys.executable, "-m", "easyllm.cli", "chat", str(tiny_model_dir)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a chat whose terminal is the pseudo-terminal
        os.execv(sys.executable, [*argv, "--max-new-tokens", "20000"])
    seen = bytearray()
    try:
        _read_until(fd, b"> ", seen)
        os.write(fd, b"Hi\r")
        # the echo, then the reply's first piece: the tiny model's greedy reply is 20,000
        # newlines, so it is still streaming when Ctrl-C arrives
        _read_until(fd, b"Hi\r\n\r\n", seen)
        os.write(fd, b"\x03")
        assert b"[stopped]" in _read_until(fd, b"> ", seen)
        os.write(fd, b"\r")  # an empty line ends the chat
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
