"""The command line: train from flags or YAML, then generate, chat, eval and export a run."""

from __future__ import annotations

import io
import json

import pytest

from easyllm.cli import build_parser, main


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
        "easyllm: error: Unknown setting(s): learnign_rate. Valid: model, task"
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


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert (
        main(
            ["train", "--data", str(tmp_path / "missing.jsonl"), "--model", str(tmp_path / "nope")]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("easyllm: error: Model folder not found") and error.count("\n") == 1
