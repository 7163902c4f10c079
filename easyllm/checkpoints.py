"""Checkpoints that survive a kill, runs that resume exactly, run folders never replaced by accident.

- A checkpoint is written into a hidden `.partial-checkpoint-N` folder and renamed into place only
  when complete, so a kill or a full disk at any moment leaves the previous checkpoint intact.
- A manifest in each checkpoint fingerprints the data, tokenizer, template and settings: resuming
  after one of them changed would silently continue a different run, so it is refused.
- The RNG state at each epoch start is kept, because samplers that shuffle with the global RNG
  (group_by_length) draw an epoch's order before the Trainer restores the checkpoint's RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import __version__
from .config import SETTINGS_FIELDS, TrainSettings
from .errors import ConfigError, SaveError, UsageError
from .hub import SAVE_INFO_FILE

if TYPE_CHECKING:
    from datasets import Dataset

    from .tasks.base import PreparedData

Resume = bool | Literal["force"]
MANIFEST_FILE = "easyllm-checkpoint.json"  # written last: a checkpoint without it is not ours or not complete
EPOCH_RNG_FILE = "epoch_rng_state_{rank}.pth"
CHECKPOINTS_PER_EPOCH = 4
KEPT_CHECKPOINTS = 2
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVERS = (".partial-checkpoint-", ".deleting-checkpoint-", ".replaced-checkpoint-", ".saving-")
_SLACK_BYTES = 64 * 2**20  # tokenizer, trainer state, logs
# Options that change how a run is recorded, not what it learns: a resumed run may change them.
_BOOKKEEPING = (
    "output_dir", "logging_", "save_", "eval_", "per_device_eval_batch_size", "disable_tqdm", "report_to",
    "run_name", "push_to_hub", "hub_", "log_level", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor",
)
_CHANGES = {
    "data": "the training data (its encoded examples or max_length)",
    "tokenizer": "the tokenizer (vocabulary, merges or special tokens)",
    "template": "the chat template",
}


# -- several processes: decide once, on the main process ----------------------------------------
def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True in a single process, and on global rank 0 under torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def _state():
    """The processes' shared state, set up as `run_arguments` has the Trainer set it up (CPU: gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def wait_for_everyone() -> None:
    if _distributed():
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (downloads, caches), then the others; nothing in one process."""
    if not _distributed():
        yield
        return
    with _state().main_process_first():
        yield


def on_main_process(function, *args: Any, **kwargs: Any) -> Any:
    """Run `function` on the main process only; every process gets its result, or raises its error."""
    if not _distributed():
        return function(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    _state()
    outcome: list[Any] = [None]
    if is_main_process():
        try:
            outcome = [(True, function(*args, **kwargs))]
        except Exception as error:  # noqa: BLE001 (the others would otherwise wait forever for a result)
            outcome = [(False, error)]
    broadcast_object_list(outcome)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


# -- the run folder ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFolder:
    """Where a run is written, and the checkpoint it continues from (None: a new run)."""

    path: Path
    resume_from: Path | None = None


def prepare_run_folder(
    output_dir: str | os.PathLike | None, model_name: str, runs_dir: str | os.PathLike, *,
    resume: Resume = False, overwrite: bool = False,
) -> RunFolder:
    """Pick and check the run folder: a new one, a resumed one, or `output_dir` if it holds no run.

    Resuming without `output_dir` picks the newest unfinished run of this model under `runs_dir`.
    """
    if resume not in (False, True, "force"):
        raise ConfigError(f"resume={resume!r}: choose False, True or 'force'")
    if resume and overwrite:
        raise ConfigError("resume and overwrite=True contradict each other: resume continues the run in the "
                          "folder, overwrite starts it again. Pass one of them.")
    return on_main_process(_prepare_run_folder, output_dir, model_name, Path(runs_dir), bool(resume), overwrite)


def start_run(
    settings: TrainSettings, model_name: str, runs_dir: str | os.PathLike, data: PreparedData, tokenizer,
    template: str | None, seed: int, resume: Resume = False, overwrite: bool = False,
) -> tuple[RunFolder, dict[str, Any]]:
    """The run folder and the manifest of what it trains on; refuses, before any work, what cannot work."""
    run = prepare_run_folder(settings.output_dir, model_name, runs_dir, resume=resume, overwrite=overwrite)
    manifest = build_manifest(data, tokenizer, template, resumable_settings(settings, seed))
    check_processes_agree(manifest)
    if run.resume_from is not None:
        check_resume(run.resume_from, manifest, force=resume == "force")
    return run, manifest


def save_run(save: Callable[[], Any], folder: Path) -> None:
    """Call `save` on the main process (the others wait); an OSError becomes a SaveError saying how to recover."""
    try:
        on_main_process(save)
    except SaveError:
        raise
    except OSError as error:
        last = latest_checkpoint(folder)
        raise SaveError(
            f"Could not write the trained model to {folder}: {error.strerror or error}. Nothing half-written was "
            "left" + (f"; {last.name} holds the trained weights: free space and run "
                      f"train(output_dir={str(folder)!r}, resume=True) to write the model." if last else ".")
        ) from error


def _prepare_run_folder(output_dir, model_name: str, runs_dir: Path, resume: bool, overwrite: bool) -> RunFolder:
    if resume:
        folder = Path(output_dir) if output_dir is not None else _newest_unfinished_run(runs_dir, model_name)
        if (folder / SAVE_INFO_FILE).is_file():
            raise UsageError(f"{folder} holds a finished run ({SAVE_INFO_FILE} is there): nothing to resume. "
                             f"Load it with ModelRunner.load('{folder}'), or train it again with overwrite=True.")
        checkpoint = latest_checkpoint(folder)
        if checkpoint is None:
            raise UsageError(f"Nothing to resume in {folder}: it holds no complete checkpoint. "
                             "Call train() without resume= to start a run.")
        _remove_leftovers(folder)
        check_writable(folder)
        return RunFolder(folder, checkpoint)
    if output_dir is None:
        return RunFolder(_new_run_dir(runs_dir, model_name))
    folder = Path(output_dir)
    if holds_run(folder):
        if not overwrite:
            what = "a finished run" if (folder / SAVE_INFO_FILE).is_file() else "an unfinished run"
            raise UsageError(f"{folder} already holds {what}. Continue it with train(resume=True, output_dir=...), "
                             "replace it with overwrite=True, or pick another output_dir.")
        _clear_run(folder)
    _remove_leftovers(folder)  # hidden remains of a run killed before its first checkpoint
    check_writable(folder)
    return RunFolder(folder)


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
    unfinished = [p for p in runs if not (p / SAVE_INFO_FILE).exists() and latest_checkpoint(p) is not None]
    if not unfinished:
        raise UsageError(f"No unfinished run of {model_name} under {runs_dir}/ to resume. "
                         "Pass output_dir= the run folder to resume, or call train() without resume=.")
    return max(unfinished, key=lambda p: latest_checkpoint(p).stat().st_mtime)


def holds_run(folder: Path) -> bool:
    return (folder / SAVE_INFO_FILE).is_file() or bool(_checkpoint_dirs(folder))


def _clear_run(folder: Path) -> None:
    """Remove what a run wrote there (model-card files are replaced by the next save); nothing else."""
    (folder / SAVE_INFO_FILE).unlink(missing_ok=True)  # first: the folder stops claiming a finished model
    for checkpoint in _checkpoint_dirs(folder):
        _delete(checkpoint)
    _remove_leftovers(folder)


def check_writable(folder: Path) -> None:
    """Create `folder` and write a byte there now, rather than fail at the first checkpoint."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"easyllm")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ConfigError(f"Cannot write to {folder}: {error.strerror or error}. "
                          "Pass output_dir= a folder you can write to.") from error


def check_free_space(folder: Path, model: torch.nn.Module, args: TrainingArguments) -> None:
    """Refuse to start when the checkpoints and the final save clearly cannot fit on the disk."""
    needed, free = estimate_run_bytes(model, args), shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(
            f"Not enough disk space in {folder}: the run needs about {_size(needed)} (checkpoints with optimizer "
            f"state, and the final model), {_size(free)} are free. Free some space, pick "
            "another output_dir, or keep fewer checkpoints (save_total_limit=1, or save_strategy='no')."
        )


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def estimate_run_bytes(model: torch.nn.Module, args: TrainingArguments) -> int:
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter = hasattr(model, "peft_config")
    weights = sum(p.numel() * p.element_size() for p in (trainable if adapter else model.parameters()))
    if args.save_strategy == "no":
        return weights + _SLACK_BYTES
    optimizer = 8 * sum(p.numel() for p in trainable)  # Adam: two fp32 moments per trained value
    kept = (args.save_total_limit or KEPT_CHECKPOINTS) + 1  # the new one is written before the oldest goes
    return kept * (weights + optimizer) + weights + _SLACK_BYTES


def run_arguments(settings: TrainSettings, *args: Any, **kwargs: Any) -> TrainingArguments:
    """`settings.training_arguments(...)` plus what reliable runs need, unless the user chose otherwise.

    Checkpoints about 4 times per epoch, keeping 2; and, under torchrun on a machine without a GPU,
    `use_cpu=True`: without it every CPU process would silently train a model of its own.
    """
    chosen = settings.trainer_args
    defaults: dict[str, Any] = {"save_total_limit": KEPT_CHECKPOINTS}
    if "save_strategy" not in chosen and not chosen.get("load_best_model_at_end"):
        defaults["save_strategy"] = "steps"
    if _distributed() and not torch.cuda.is_available():
        defaults["use_cpu"] = True
    arguments = dataclasses.replace(settings, trainer_args={**defaults, **chosen}).training_arguments(*args, **kwargs)
    if arguments.save_strategy == "steps" and "save_steps" not in chosen:
        share = 1 / CHECKPOINTS_PER_EPOCH  # below 1, the Trainer reads save_steps as a share of all steps
        epochs = arguments.num_train_epochs if arguments.max_steps <= 0 else 1
        arguments.save_steps = min(share, share / epochs)
    return arguments


# -- finding, publishing and rotating checkpoints --------------------------------------------
def _step(path: Path) -> int:
    return int(_CHECKPOINT.match(path.name).group(1))


def _checkpoint_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()), key=_step)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in a run folder (one holding its manifest), or None."""
    complete = [p for p in _checkpoint_dirs(Path(folder)) if (p / MANIFEST_FILE).is_file()]
    return complete[-1] if complete else None


def _delete(path: Path) -> None:
    """Rename first: a kill during the deletion leaves a hidden leftover, never a half-deleted checkpoint."""
    if not path.exists():
        return
    doomed = path if path.name.startswith(".") else path.with_name(f".deleting-{path.name}")
    if doomed != path:
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(_LEFTOVERS) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return  # directories cannot be opened on some platforms: best effort
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory: best effort
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(staged: Path, target: Path) -> None:
    """Flush the staged files, then rename: a power cut cannot publish a checkpoint of empty files."""
    for path in staged.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(staged)
    if target.exists():
        replaced = target.with_name(f".replaced-{target.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        target.rename(replaced)
        staged.rename(target)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        staged.rename(target)
    _fsync(target.parent)


def rotate_checkpoints(folder: Path, limit: int | None, best: str | None = None) -> None:
    """Keep the newest `limit` checkpoints, and always the newest and the best one (like the Trainer)."""
    if not limit or limit <= 0:
        return
    checkpoints = _checkpoint_dirs(folder)
    protected = {checkpoints[-1].name} | ({Path(best).name} if best else set())
    excess = len(checkpoints) - max(limit, len(protected))
    for old in [c for c in checkpoints if c.name not in protected][:max(excess, 0)]:
        _delete(old)


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
            super()._save_checkpoint(model, trial)
            self._finish_checkpoint(staging / name, run_dir / name)
        except OSError as error:
            if writer:
                shutil.rmtree(staging, ignore_errors=True)
            previous = latest_checkpoint(run_dir)
            raise SaveError(
                f"Could not write {name} in {run_dir}: {error.strerror or error}. Nothing half-written was left; "
                + (f"{previous.name} is intact. " if previous else "")
                + "Free disk space (or fix the folder) and continue with runner.train(output_dir=..., resume=True)."
            ) from error
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if writer:
            _publish(staging / name, run_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)

    def _finish_checkpoint(self, folder: Path, final: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.epoch_rng is not None and self.epoch_rng.saved is not None:
            torch.save(self.epoch_rng.saved, folder / EPOCH_RNG_FILE.format(rank=self.args.process_index))
        if not self.args.should_save:
            return
        best = self.state.best_model_checkpoint
        if best and Path(best).parent.name.startswith(".partial-"):  # the Trainer saw the staging path
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(folder / "trainer_state.json"))
        manifest = {**(self.checkpoint_manifest or {}), "step": self.state.global_step}
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


@cache
def _resumable_class(base: type) -> type:
    return type(base.__name__, (ResumableMixin, base), {"__module__": base.__module__, "__doc__": base.__doc__})


def make_resumable(trainer: Trainer, manifest: dict[str, Any] | None = None,
                   resume_from: str | os.PathLike | None = None) -> Trainer:
    """Give any Trainer (transformers or TRL) atomic checkpoints, a manifest and an exact data order on resume.

    >>> trainer = make_resumable(DPOTrainer(...), manifest)
    >>> trainer.train(resume_from_checkpoint=latest_checkpoint(folder))
    """
    if not isinstance(trainer, ResumableMixin):
        trainer.__class__ = _resumable_class(type(trainer))
    trainer.checkpoint_manifest = manifest
    if resume_from is not None and 0 < trainer.args.save_steps < 1:  # the share, as the steps it came to
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
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                   has_gauss, gauss], "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])


class EpochRng(TrainerCallback):
    """Keeps the RNG state of each epoch start; a resumed run restores it before the epoch's order is drawn.

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


# -- the manifest: what a checkpoint was trained on -------------------------------------------
def digest(value: Any) -> str:
    """A short, stable hash of any JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hash_column(hasher, array) -> None:
    import pyarrow as pa

    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        hasher.update(np.asarray(array.value_lengths().fill_null(-1)).tobytes())
        _hash_column(hasher, array.flatten())
    elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type):
        hasher.update(array.to_numpy(zero_copy_only=False).tobytes())
    else:
        hasher.update(json.dumps(array.to_pylist(), default=str).encode())


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the encoded rows themselves (datasets' own fingerprint can be random for in-memory data)."""
    hasher = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=4096):
        for name in sorted(batch.column_names):
            hasher.update(name.encode())
            _hash_column(hasher, batch.column(name).combine_chunks())
    return hasher.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        spec = {"vocab": tokenizer.get_vocab()}
    spec["special_tokens"] = {name: str(value) for name, value in tokenizer.special_tokens_map.items()}
    return digest(spec)


def resumable_settings(settings: TrainSettings, seed: int) -> dict[str, Any]:
    """The settings that decide what a run learns (bookkeeping such as logging or saving left out)."""
    values = {**{k: getattr(settings, k) for k in SETTINGS_FIELDS}, **settings.trainer_args,
              "seed": seed, "processes": int(os.environ.get("WORLD_SIZE", "1"))}
    kept = {k: v for k, v in values.items() if not k.startswith(_BOOKKEEPING)}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def build_manifest(data: PreparedData, tokenizer, template: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Fingerprints of everything a resumed run must share with the checkpoint (see `check_resume`)."""
    train = dataset_fingerprint(data.train)  # hashes every encoded row: once per run
    return {
        "easyllm_version": __version__,
        "train_fingerprint": train,  # reproduce.json shows it as is
        "fingerprints": {
            "data": digest([train, data.max_length]),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "template": digest(template),
            "settings": digest(settings),
        },
        "settings": settings,
        "train_examples": len(data.train),
    }


def check_processes_agree(manifest: dict[str, Any]) -> None:
    """Every process prepares its own data: refuse to train if any of them got other rows or settings."""
    if not _distributed():
        return
    from accelerate.utils import gather_object

    _state()
    seen = gather_object([manifest["fingerprints"]])
    differing = sorted({key for prints in seen for key in prints if prints[key] != seen[0][key]})
    if differing:
        raise ConfigError(f"The {len(seen)} processes prepared different {', '.join(differing)}. Give every "
                          "process the same files, options and seed (load_data must be deterministic).")


def check_resume(checkpoint: Path, manifest: dict[str, Any], *, force: bool = False) -> None:
    """Refuse to resume when the data, tokenizer, template or settings differ from the checkpoint's."""
    saved = json.loads((checkpoint / MANIFEST_FILE).read_text())
    now, then = manifest["fingerprints"], saved.get("fingerprints", {})
    changed = [what for what in now if then.get(what) != now[what]]
    if not changed:
        return
    lines = [_CHANGES[what] for what in changed if what in _CHANGES]
    if "settings" in changed:
        old, new = saved.get("settings", {}), manifest["settings"]
        lines += [f"setting {key}: {old.get(key, '(unset)')!r} then, {new.get(key, '(unset)')!r} now"
                  for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    message = f"{checkpoint} was written with different {', '.join(changed)}:\n  " + "\n  ".join(lines)
    if force:
        if is_main_process():
            print(f"easyllm: WARNING: resuming anyway (resume='force'). {message}")
        return
    raise ConfigError(message + "\nResume with the same data and settings, pass resume='force' to continue "
                      "anyway, or start a new run (another output_dir, or overwrite=True).")
