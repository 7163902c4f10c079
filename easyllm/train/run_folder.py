"""The run folder: a new one, a resumed one, or the user's; never one replaced by accident.

A folder that holds a run is only replaced with overwrite=True; `resume=True` picks the newest
unfinished run; the folder is checked for write access and free space before any work.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import TrainingArguments

from ..errors import ConfigError, SaveError, UsageError
from ..records.folder import SAVE_INFO_FILE
from .checkpoints import (
    KEPT_CHECKPOINTS,
    checkpoint_dirs,
    delete,
    latest_checkpoint,
    remove_leftovers,
)
from .distributed import on_main_process
from .manifest import build_manifest, check_processes_agree, check_resume, resumable_settings
from .settings import TrainSettings

if TYPE_CHECKING:
    from ..data.prepared import PreparedData

try:  # Unix: one trainer per run folder
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: runs are not locked there
    fcntl = None

Resume = bool | Literal["force"]
_SLACK_BYTES = 64 * 2**20  # tokenizer, trainer state, logs
LOCK_FILE = ".easyllm-train.lock"
_HELD: dict[Path, int] = {}  # the run folders this process trains in: their locks' descriptors
# What a run leaves in its folder before its first checkpoint (a run killed early): not foreign.
_RUN_LEFTOVERS = ("reproduce.json", "runs")


@dataclass(frozen=True)
class RunFolder:
    """Where a run is written, and the checkpoint it continues from (None: a new run)."""

    path: Path
    resume_from: Path | None = None


def prepare_run_folder(
    output_dir: str | os.PathLike | None,
    model_name: str,
    runs_dir: str | os.PathLike,
    *,
    resume: Resume = False,
    overwrite: bool = False,
) -> RunFolder:
    """Pick and check the run folder: a new one, a resumed one, or `output_dir` if it holds no run.

    Resuming without `output_dir` picks the newest unfinished run of this model under `runs_dir`.
    """
    if resume not in (False, True, "force"):
        raise ConfigError(f"resume={resume!r}: choose False, True or 'force'")
    if resume and overwrite:
        raise ConfigError(
            "resume and overwrite=True contradict each other: resume continues the run in the "
            "folder, overwrite starts it again. Pass one of them."
        )
    return on_main_process(
        _prepare_run_folder, output_dir, model_name, Path(runs_dir), bool(resume), overwrite
    )


def start_run(
    settings: TrainSettings,
    model_name: str,
    runs_dir: str | os.PathLike,
    data: PreparedData,
    tokenizer,
    template: str | None,
    seed: int,
    resume: Resume = False,
    overwrite: bool = False,
) -> tuple[RunFolder, dict[str, Any]]:
    """The run folder and the manifest of what it trains on; refuses at once what cannot work."""
    run = prepare_run_folder(
        settings.output_dir, model_name, runs_dir, resume=resume, overwrite=overwrite
    )
    manifest = build_manifest(data, tokenizer, template, resumable_settings(settings, seed))
    check_processes_agree(manifest)
    if run.resume_from is not None:
        check_resume(run.resume_from, manifest, force=resume == "force")
    return run, manifest


def save_run(save: Callable[[], Any], folder: Path) -> None:
    """Call `save` on the main process (the others wait).

    An OSError becomes a SaveError saying how to recover.
    """
    try:
        on_main_process(save)
    except SaveError:
        raise
    except OSError as error:
        last = latest_checkpoint(folder)
        recovery = (
            f"; {last.name} holds the trained weights: free space and run "
            f"train(output_dir={str(folder)!r}, resume=True) to write the model."
            if last
            else "."
        )
        raise SaveError(
            f"Could not write the trained model to {folder}: {error.strerror or error}. "
            f"Nothing half-written was left{recovery}"
        ) from error


def _prepare_run_folder(
    output_dir, model_name: str, runs_dir: Path, resume: bool, overwrite: bool
) -> RunFolder:
    if resume:
        folder = (
            Path(output_dir)
            if output_dir is not None
            else _newest_unfinished_run(runs_dir, model_name)
        )
        if (folder / SAVE_INFO_FILE).is_file():
            raise UsageError(
                f"{folder} holds a finished run ({SAVE_INFO_FILE} is there): nothing to resume. "
                f"Load it with ModelRunner.load('{folder}'), or train it again with overwrite=True."
            )
        checkpoint = latest_checkpoint(folder)
        if checkpoint is None:
            raise UsageError(
                f"Nothing to resume in {folder}: it holds no complete checkpoint. "
                "Call train() without resume= to start a run."
            )
        remove_leftovers(folder)
        check_writable(folder)
        lock_run(folder)
        return RunFolder(folder, checkpoint)
    if output_dir is None:
        folder = _new_run_dir(runs_dir, model_name)
        lock_run(folder)
        return RunFolder(folder)
    folder = Path(output_dir)
    _refuse_foreign_files(folder)
    if holds_run(folder):
        if not overwrite:
            what = "a finished run" if (folder / SAVE_INFO_FILE).is_file() else "an unfinished run"
            raise UsageError(
                f"{folder} already holds {what}. Continue it with "
                "train(resume=True, output_dir=...), replace it with overwrite=True, or pick "
                "another output_dir."
            )
        _clear_run(folder)
    remove_leftovers(folder)  # hidden remains of a run killed before its first checkpoint
    check_writable(folder)
    lock_run(folder)
    return RunFolder(folder)


def _refuse_foreign_files(folder: Path) -> None:
    """An output_dir that is not a run (a project folder) must not get its files replaced."""
    if not folder.is_dir() or holds_run(folder):
        return
    foreign = sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name not in _RUN_LEFTOVERS
    )
    if foreign:
        raise ConfigError(
            f"{folder} holds files that are not an easyllm run ({', '.join(foreign[:5])}): "
            "training there would replace them. Pass an empty or new output_dir."
        )


def lock_run(folder: Path) -> None:
    """Hold `folder`'s lock while this process trains there: another process is refused at once."""
    key = folder.resolve()
    if fcntl is None or key in _HELD:
        return
    descriptor = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise UsageError(
            f"Another process is training in {folder} right now. Wait for it to finish (or stop "
            "it), or pass another output_dir."
        ) from None
    _HELD[key] = descriptor


def unlock_run(folder: str | os.PathLike) -> None:
    """Let other processes train in `folder` again (no-op if this process holds no lock there)."""
    key = Path(folder).resolve()
    descriptor = _HELD.pop(key, None)
    if descriptor is not None:
        # a finished run keeps no hidden file (the next trainer makes a new lock file)
        (key / LOCK_FILE).unlink(missing_ok=True)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _locked_elsewhere(folder: Path) -> bool:
    if fcntl is None or folder.resolve() in _HELD or not (folder / LOCK_FILE).exists():
        return False
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)
    return False


def run_slug(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name).name).strip("-") or "model"


def _new_run_dir(runs_dir: Path, model_name: str) -> Path:
    """A folder no other run uses: created here, so two runs started in the same second differ."""
    base = runs_dir / f"{run_slug(model_name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, counter = base, 2
    check_writable(runs_dir)
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, counter = Path(f"{base}-{counter}"), counter + 1


def _newest_unfinished_run(runs_dir: Path, model_name: str) -> Path:
    pattern = re.compile(re.escape(run_slug(model_name)) + r"-\d{8}-\d{6}(-\d+)?$")
    runs = [p for p in runs_dir.iterdir() if pattern.match(p.name)] if runs_dir.is_dir() else []
    unfinished = [
        p
        for p in runs
        if not (p / SAVE_INFO_FILE).exists()
        and latest_checkpoint(p) is not None
        and not _locked_elsewhere(p)  # another notebook is still training it
    ]
    if not unfinished:
        raise UsageError(
            f"No unfinished run of {model_name} under {runs_dir}/ to resume. "
            "Pass output_dir= the run folder to resume, or call train() without resume=."
        )
    return max(unfinished, key=lambda p: latest_checkpoint(p).stat().st_mtime)


def holds_run(folder: Path) -> bool:
    return (folder / SAVE_INFO_FILE).is_file() or bool(checkpoint_dirs(folder))


def _clear_run(folder: Path) -> None:
    """Remove what a run wrote there, nothing else (the next save replaces model-card files)."""
    # First: the folder stops claiming a finished model.
    (folder / SAVE_INFO_FILE).unlink(missing_ok=True)
    for checkpoint in checkpoint_dirs(folder):
        delete(checkpoint)
    remove_leftovers(folder)


def check_writable(folder: Path) -> None:
    """Create `folder` and write a byte there now, rather than fail at the first checkpoint."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"easyllm")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ConfigError(
            f"Cannot write to {folder}: {error.strerror or error}. "
            "Pass output_dir= a folder you can write to."
        ) from error


def check_free_space(folder: Path, model: torch.nn.Module, args: TrainingArguments) -> None:
    """Refuse to start when the checkpoints and the final save clearly cannot fit on the disk."""
    needed, free = estimate_run_bytes(model, args), shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(
            f"Not enough disk space in {folder}: the run needs about {_size(needed)} (checkpoints "
            f"with optimizer state, and the final model), {_size(free)} are free. Free some "
            "space, pick another output_dir, or keep fewer checkpoints (save_total_limit=1, or "
            "save_strategy='no')."
        )


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def estimate_run_bytes(model: torch.nn.Module, args: TrainingArguments) -> int:
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter = hasattr(model, "peft_config")
    weights = sum(
        p.numel() * p.element_size() for p in (trainable if adapter else model.parameters())
    )
    if args.save_strategy == "no":
        return weights + _SLACK_BYTES
    optimizer = 8 * sum(p.numel() for p in trainable)  # Adam: two fp32 moments per trained value
    # The new one is written before the oldest goes.
    kept = (args.save_total_limit or KEPT_CHECKPOINTS) + 1
    return kept * (weights + optimizer) + weights + _SLACK_BYTES
