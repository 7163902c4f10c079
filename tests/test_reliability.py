"""Interrupted runs resume exactly, checkpoints are never half-written, and run folders are never
replaced by accident.

The tiny model trains on one thread (fast and deterministic on a busy machine). Killed runs are
real subprocesses (tests/scripts/train_tiny.py) that get SIGKILL or SIGINT at a random step.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from easyllm import ConfigError, ModelRunner, UsageError
from easyllm.data.collator import PaddingCollator
from easyllm.errors import SaveError
from easyllm.train.checkpoints import latest_checkpoint, make_resumable
from easyllm.train.manifest import MANIFEST_FILE

SCRIPT = REPO / "tests" / "scripts" / "train_tiny.py"
_spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
train_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_tiny)

STEPS = 18  # 24 rows, batches of 4, 3 epochs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _runner(model_dir, data=None) -> ModelRunner:
    runner = ModelRunner(str(model_dir))
    runner.load_data(data or train_tiny.rows(), val_size=0)
    return runner


def _train(model_dir, folder, data=None, **options) -> ModelRunner:
    runner = _runner(model_dir, data)
    runner.train(output_dir=str(folder), **{**train_tiny.train_args(), **options})
    return runner


def _adapter(runner: ModelRunner) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone() for name, p in runner.model.named_parameters() if "lora_" in name
    }


def _assert_same_weights(runner: ModelRunner, expected: dict[str, torch.Tensor]) -> None:
    got = _adapter(runner)
    assert got.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run that keeps every checkpoint."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    runner = _train(tiny_model_dir, folder, save_total_limit=None)
    return folder, _adapter(runner), runner.last_result.metrics


def _resume_from_copy(model_dir, reference_folder: Path, step: int, folder: Path) -> ModelRunner:
    folder.mkdir()
    shutil.copytree(reference_folder / f"checkpoint-{step}", folder / f"checkpoint-{step}")
    return _train(model_dir, folder, resume=True)


def test_checkpoints_a_few_times_per_epoch_each_with_its_manifest(reference):
    folder, _, _ = reference
    steps = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
    assert steps == list(range(2, STEPS + 1, 2))  # 6 steps per epoch: every 2 steps
    manifest = json.loads((folder / f"checkpoint-{STEPS}" / MANIFEST_FILE).read_text())
    assert set(manifest["fingerprints"]) == {"data", "tokenizer", "template", "settings"}
    assert manifest["step"] == STEPS and manifest["settings"]["learning_rate"] == 1e-2
    assert (folder / "easyllm.json").is_file() and not list(folder.glob(".*"))


@pytest.mark.parametrize("step", [4, 6, 8])  # inside epoch 0, at the epoch boundary, inside epoch 1
def test_resuming_from_any_checkpoint_ends_with_the_same_weights(
    tiny_model_dir, reference, tmp_path, step
):
    folder, expected, metrics = reference
    runner = _resume_from_copy(tiny_model_dir, folder, step, tmp_path / "run")
    # same data order (group_by_length, packing), optimizer, schedule
    _assert_same_weights(runner, expected)
    assert runner.last_result.metrics["train_loss"] == pytest.approx(
        metrics["train_loss"], rel=1e-5
    )
    assert runner.last_result.metrics["global_step"] == STEPS


def _start(model_dir, folder, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(model_dir), str(folder), *options],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _signal_at_step(process: subprocess.Popen, step: int, number: int, delay: float) -> str:
    """Send `number` once the process reports `step` (plus `delay`); return all it printed."""
    output = []
    for line in process.stdout:
        output.append(line)
        if line.strip() == f"step {step}":
            time.sleep(delay)
            process.send_signal(number)
            break
    output.append(process.stdout.read())
    process.wait(timeout=120)
    return "".join(output)


def test_a_run_killed_twice_and_interrupted_ends_like_an_uninterrupted_one(
    tiny_model_dir, reference, tmp_path
):
    """SIGKILL in a checkpoint write, SIGKILL and SIGINT at random steps, then resume to the end."""
    seed = int(os.environ.get("EASYLLM_TEST_SEED", random.randrange(10_000)))
    rng = random.Random(seed)
    folder = tmp_path / "run"

    # weights written, optimizer not
    died = _start(tiny_model_dir, folder, "--die-while-saving", "2")
    output = _signal_at_step(died, STEPS + 1, signal.SIGKILL, 0)
    assert died.returncode == -signal.SIGKILL, output
    assert (
        latest_checkpoint(folder).name == "checkpoint-2" and not (folder / "checkpoint-4").exists()
    )
    # what the kill left: hidden, never resumed from
    assert (folder / ".partial-checkpoint-4").is_dir()

    kill_at = rng.randint(5, 11)
    killed = _start(tiny_model_dir, folder, "--resume", "--step-delay", "0.05")
    output = _signal_at_step(killed, kill_at, signal.SIGKILL, rng.uniform(0, 0.08))
    assert killed.returncode == -signal.SIGKILL, f"seed {seed}: {output}"
    resumed_at = int(latest_checkpoint(folder).name.split("-")[1])
    assert resumed_at >= 4, f"seed {seed}"  # checkpoint-4 was complete before step 5 began

    interrupt_at = rng.randint(resumed_at + 1, STEPS - 3)
    interrupted = _start(tiny_model_dir, folder, "--resume", "--step-delay", "0.05")
    output = _signal_at_step(interrupted, interrupt_at, signal.SIGINT, rng.uniform(0, 0.04))
    assert interrupted.returncode != 0, f"seed {seed}: {output}"
    stopped = re.search(
        r"Training stopped by SIGINT at step (\d+) of 18; (\S+) holds everything", output
    )
    assert stopped and "resume=True" in output, f"seed {seed}: {output}"
    assert latest_checkpoint(folder).name == f"checkpoint-{stopped.group(1)}"
    assert not (folder / "easyllm.json").exists()  # an unfinished run is never marked as saved

    runner = _train(tiny_model_dir, folder, resume=True)
    _assert_same_weights(runner, reference[1])
    assert (folder / "easyllm.json").is_file() and not list(folder.glob(".*"))
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-18"]


def test_resuming_refuses_changed_data_tokenizer_template_or_settings(
    tiny_model_dir, reference, tmp_path
):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copytree(reference[0] / "checkpoint-4", folder / "checkpoint-4")
    args = {**train_tiny.train_args(), "output_dir": str(folder)}
    runner = _runner(tiny_model_dir)
    with pytest.raises(
        ConfigError, match=r"different settings:\n  setting learning_rate: 0.01 then, 0.02 now"
    ):
        runner.train(resume=True, **{**args, "learning_rate": 2e-2})
    with pytest.raises(ConfigError, match=r"different data:\n  the training data") as raised:
        _runner(tiny_model_dir, train_tiny.rows(23)).train(resume=True, **args)
    assert "resume='force'" in str(raised.value)
    runner.tokenizer.add_tokens(["<new-token>"])
    with pytest.raises(ConfigError, match="different tokenizer"):
        runner.train(resume=True, **args)
    other_template = ModelRunner(str(tiny_model_dir), template="chatml")
    other_template.load_data(train_tiny.rows(), val_size=0)
    with pytest.raises(ConfigError, match=r"different (data, )?template"):
        other_template.train(resume=True, **args)
    forced = _runner(tiny_model_dir)
    forced.train(resume="force", **{**args, "learning_rate": 2e-2})
    assert forced.last_result.metrics["global_step"] == STEPS


def test_a_folder_holding_a_run_is_only_replaced_with_overwrite(
    tiny_model_dir, reference, tmp_path, monkeypatch
):
    folder = tmp_path / "run"
    _train(tiny_model_dir, folder, max_steps=2)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already holds a finished run.*overwrite=True"):
        _train(tiny_model_dir, folder, max_steps=2)
    with pytest.raises(UsageError, match="finished run .*nothing to resume"):
        _train(tiny_model_dir, folder, resume=True)
    with pytest.raises(ConfigError, match="contradict"):
        _train(tiny_model_dir, folder, resume=True, overwrite=True)
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    _train(tiny_model_dir, folder, max_steps=4, overwrite=True)
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert (folder / "notes.txt").read_text() == "mine"  # only what a run writes is replaced

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copytree(reference[0] / "checkpoint-4", unfinished / "checkpoint-4")
    with pytest.raises(
        UsageError, match="already holds an unfinished run. Continue it with train\\(resume=True"
    ):
        _train(tiny_model_dir, unfinished)


def test_without_output_dir_each_run_gets_a_new_folder_and_resume_finds_the_newest(
    tiny_model_dir, reference, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    first, second = _runner(tiny_model_dir), _runner(tiny_model_dir)
    first.train(max_steps=1, **train_tiny.TRAIN_ARGS)
    second.train(max_steps=1, **train_tiny.TRAIN_ARGS)
    runs = sorted((tmp_path / "easyllm-runs").iterdir())
    assert len(runs) == 2 and runs[0] != runs[1]
    assert f"the run is saved in {Path('easyllm-runs') / runs[1].name}" in capsys.readouterr().out
    unfinished = tmp_path / "easyllm-runs" / f"{tiny_model_dir.name}-20990101-000000"
    unfinished.mkdir()
    shutil.copytree(reference[0] / "checkpoint-16", unfinished / "checkpoint-16")
    resumed = _runner(tiny_model_dir)
    resumed.train(resume=True, **train_tiny.train_args())
    assert "resuming from checkpoint-16" in capsys.readouterr().out
    _assert_same_weights(resumed, reference[1])
    assert (unfinished / "easyllm.json").is_file()
    with pytest.raises(UsageError, match="No unfinished run of .* to resume"):
        _runner(tiny_model_dir).train(resume=True, **train_tiny.train_args())


def test_leftovers_of_a_killed_write_are_ignored_and_removed(tiny_model_dir, reference, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copytree(reference[0] / "checkpoint-14", folder / "checkpoint-14")
    shutil.copytree(
        reference[0] / "checkpoint-16", folder / ".partial-checkpoint-16" / "checkpoint-16"
    )
    (folder / "checkpoint-15").mkdir()  # a folder without a manifest is not a complete checkpoint
    runner = _train(tiny_model_dir, folder, resume=True)
    _assert_same_weights(runner, reference[1])
    assert not list(folder.glob(".partial-*"))


def test_unwritable_folders_and_a_full_disk_are_refused_before_training(
    tiny_model_dir, tmp_path, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    runner = _runner(tiny_model_dir)
    with pytest.raises(ConfigError, match=f"Cannot write to {blocker / 'run'}: .*Pass output_dir="):
        runner.train(output_dir=str(blocker / "run"), max_steps=1)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        "easyllm.train.run_folder.shutil.disk_usage", lambda _: usage._replace(free=10_000)
    )
    with pytest.raises(
        ConfigError,
        match=r"Not enough disk space .*about 6\d MiB .*0 MiB are free.*save_total_limit=1",
    ):
        runner.train(output_dir=str(tmp_path / "run"), max_steps=1)


def test_a_disk_full_during_a_checkpoint_keeps_the_previous_one(
    tiny_model_dir, reference, tmp_path, monkeypatch
):
    from transformers import Trainer

    folder = tmp_path / "run"
    save_optimizer, calls = Trainer._save_optimizer_and_scheduler, []

    def full_disk(self, output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            # a partial file, as a full disk leaves
            Path(output_dir, "optimizer.pt").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        save_optimizer(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(
        SaveError,
        match=(
            "Could not write checkpoint-4 .* No space left on device. Nothing "
            "half-written was left; checkpoint-2 is intact.*resume=True"
        ),
    ):
        _train(tiny_model_dir, folder)
    # no partial checkpoint
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "reproduce.json"]
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_optimizer)
    _assert_same_weights(_train(tiny_model_dir, folder, resume=True), reference[1])


def test_any_trainer_gets_atomic_checkpoints(tiny_model_dir, tmp_path):
    """TRL's trainers (DPO, KTO, ...) get the runner's checkpoints through make_resumable."""
    from transformers import Trainer, TrainingArguments

    from easyllm.train.checkpoints import ResumableMixin

    runner = _runner(tiny_model_dir)

    class TaskTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(**inputs).loss

    args = TrainingArguments(
        str(tmp_path),
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
        report_to="none",
        per_device_train_batch_size=2,
        remove_unused_columns=False,
    )
    trainer = make_resumable(
        TaskTrainer(
            model=runner.model,
            args=args,
            train_dataset=runner.data.train,
            data_collator=PaddingCollator(runner.tokenizer.pad_token_id),
        ),
        {"task": "test"},
    )
    assert isinstance(trainer, ResumableMixin) and type(trainer).__name__ == "TaskTrainer"
    trainer.train()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]
    assert json.loads((tmp_path / "checkpoint-2" / MANIFEST_FILE).read_text()) == {
        "task": "test",
        "step": 2,
    }
