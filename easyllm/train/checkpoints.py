"""Checkpoints that survive a kill, and runs that resume exactly.

- A checkpoint is written into a hidden `.partial-checkpoint-N` folder and renamed into place only
  when complete (files.publish_folder), so a kill or a full disk at any moment leaves the
  previous checkpoint intact. The manifest (manifest.py) is written last.
- The RNG state at each epoch start is kept, because samplers that shuffle with the global RNG
  (group_by_length) draw an epoch's order before the Trainer restores the checkpoint's RNG state.

The Trainer hooks overridden here are listed in compat.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..errors import SaveError
from ..files import publish_folder
from .manifest import MANIFEST_FILE

EPOCH_RNG_FILE = "epoch_rng_state_{rank}.pth"
KEPT_CHECKPOINTS = 2
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LEFTOVERS = (
    ".partial-checkpoint-",
    ".deleting-checkpoint-",
    ".replaced-checkpoint-",
    ".saving-",
    ".staging-",
)


def _step(path: Path) -> int:
    return int(_CHECKPOINT.match(path.name).group(1))


def checkpoint_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()), key=_step
    )


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in a run folder (one holding its manifest), or None."""
    complete = [p for p in checkpoint_dirs(Path(folder)) if (p / MANIFEST_FILE).is_file()]
    return complete[-1] if complete else None


def delete(path: Path) -> None:
    """Rename first: a kill mid-deletion leaves a hidden leftover, not a half-deleted checkpoint."""
    if not path.exists():
        return
    doomed = path if path.name.startswith(".") else path.with_name(f".deleting-{path.name}")
    if doomed != path:
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(folder: Path) -> None:
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(LEFTOVERS) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def rotate_checkpoints(folder: Path, limit: int | None, best: str | None = None) -> None:
    """Keep the newest `limit` checkpoints and always the newest and best one (like the Trainer)."""
    if not limit or limit <= 0:
        return
    checkpoints = checkpoint_dirs(folder)
    protected = {checkpoints[-1].name} | ({Path(best).name} if best else set())
    excess = len(checkpoints) - max(limit, len(protected))
    for old in [c for c in checkpoints if c.name not in protected][: max(excess, 0)]:
        delete(old)


class ResumableMixin:
    """Trainer mixin: atomic checkpoints, and the same batches whatever the number of processes.

    Each checkpoint goes to `.partial-checkpoint-N`: every process writes its part there (RNG state,
    DeepSpeed/FSDP shards), then the main process adds the manifest, renames the folder into place
    and rotates old checkpoints.
    """

    checkpoint_manifest: dict[str, Any] | None = None
    epoch_rng: EpochRng | None = None
    _staging_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler) and self.args.world_size > 1:
            # Group lengths by the global batch: each process takes its slice of the batches one
            # process would see, so N processes train like one (and wait less for each other).
            sampler.batch_size *= self.args.world_size
        return sampler

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / f".partial-{name}"
        writer = self.args.should_save
        if writer:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed run left at this step
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staging)
        try:
            with _without_secrets(self.args):
                super()._save_checkpoint(model, trial)
            self._finish_checkpoint(staging / name, run_dir / name)
        except OSError as error:
            if writer:
                shutil.rmtree(staging, ignore_errors=True)
            previous = latest_checkpoint(run_dir)
            intact = f"{previous.name} is intact. " if previous else ""
            raise SaveError(
                f"Could not write {name} in {run_dir}: {error.strerror or error}. Nothing "
                f"half-written was left; {intact}Free disk space (or fix the folder) and continue "
                "with runner.train(output_dir=..., resume=True)."
            ) from error
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if writer:
            publish_folder(staging / name, run_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint
            )

    def _finish_checkpoint(self, folder: Path, final: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.epoch_rng is not None and self.epoch_rng.saved is not None:
            torch.save(
                self.epoch_rng.saved, folder / EPOCH_RNG_FILE.format(rank=self.args.process_index)
            )
        if not self.args.should_save:
            return
        best = self.state.best_model_checkpoint
        # The Trainer saw the staging path.
        if best and Path(best).parent.name.startswith(".partial-"):
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(folder / "trainer_state.json"))
        manifest = {**(self.checkpoint_manifest or {}), "step": self.state.global_step}
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


@contextlib.contextmanager
def _without_secrets(args: Any) -> Iterator[None]:
    """The checkpoint's training_args.bin is a pickle of the arguments: keep the hub token out."""
    token, args.hub_token = args.hub_token, None
    try:
        yield
    finally:
        args.hub_token = token


@cache
def _resumable_class(base: type) -> type:
    return type(
        base.__name__,
        (ResumableMixin, base),
        {"__module__": base.__module__, "__doc__": base.__doc__},
    )


def make_resumable(
    trainer: Trainer,
    manifest: dict[str, Any] | None = None,
    resume_from: str | os.PathLike | None = None,
) -> Trainer:
    """Give any Trainer (TRL's too) atomic checkpoints, a manifest, exact data order on resume.

    >>> trainer = make_resumable(DPOTrainer(...), manifest)
    >>> trainer.train(resume_from_checkpoint=latest_checkpoint(folder))
    """
    if not isinstance(trainer, ResumableMixin):
        trainer.__class__ = _resumable_class(type(trainer))
    trainer.checkpoint_manifest = manifest
    # save_steps given as a share: the steps it came to.
    if resume_from is not None and 0 < trainer.args.save_steps < 1:
        state = json.loads((Path(resume_from) / "trainer_state.json").read_text())
        trainer.args.save_steps = state.get("save_steps") or trainer.args.save_steps
    if trainer.epoch_rng is not None:  # made resumable before: one callback, for this run
        trainer.remove_callback(trainer.epoch_rng)
    trainer.epoch_rng = EpochRng(trainer, Path(resume_from) if resume_from is not None else None)
    trainer.add_callback(trainer.epoch_rng)
    return trainer


# -- the epoch's data order on resume ---------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])


class EpochRng(TrainerCallback):
    """Keeps the RNG state of each epoch start; a resumed run restores it before the order is drawn.

    The Trainer restores the checkpoint's own RNG state only after it has started iterating the
    epoch, which is when LengthGroupedSampler draws its permutation from the global RNG.
    """

    def __init__(self, trainer: Trainer, resume_from: Path | None) -> None:
        self.trainer = trainer
        self.resume_from = resume_from
        self.saved: dict[str, Any] | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = math.floor(state.epoch + 1e-6)
        if self.resume_from is not None:
            checkpoint, self.resume_from = self.resume_from, None
            path = checkpoint / EPOCH_RNG_FILE.format(rank=args.process_index)
            saved = torch.load(path) if path.is_file() else None
            if saved is not None and saved["epoch"] == epoch:  # resumed inside the epoch it started
                _set_rng_state(saved["rng"])
            else:  # resumed at an epoch boundary: the step's own RNG state is the epoch's start
                self.trainer._load_rng_state(str(checkpoint))
        self.saved = {"epoch": epoch, "rng": _rng_state()}
        return control
