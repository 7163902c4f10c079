"""The saved-model folder: what save() and merge() write, and what load() reads back.

A saved folder holds the adapter (or, after full fine-tuning, the weights), the tokenizer with
the training chat template, a model card and `easyllm.json` (`SaveInfo`: how to rebuild the
runner). Everything is written into a hidden staging folder first and moved in with
easyllm.json last, so a folder that has easyllm.json is complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapters import copy_dequantized_weights
from ..data.rows import Reject, write_rejects
from ..errors import ModelLoadError
from ..files import CARD_FILE, REJECTS_FILE, move_into, staged_folder, write_json_atomic
from ..methods import is_4bit, load_adapter, without_adapter
from ..version import __version__

SAVE_INFO_FILE = "easyllm.json"
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    SAVE_INFO_FILE,
)
SAVED_FILES = (
    *ADAPTER_FILES,
    "model.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "metrics.json",
    "loss.png",
    "rejects.jsonl",
    "parity.json",
)


@dataclass
class SaveInfo:
    """What easyllm.json holds: enough to rebuild the runner that saved the folder.

    `base_model`: where the base weights come from (None: the folder holds full weights).
    `max_length`: what the data was cut to in training; later encodings cut the same way.
    `task_info`: what a task whose model is built from the data needs (classify: its labels).
    """

    task: str
    method: str
    adapter: bool
    base_model: str | None
    trust_remote_code: bool = False
    max_length: int = 1024
    task_info: dict[str, Any] | None = None
    template_fingerprint: dict[str, Any] | None = None
    files: list[str] | None = (
        None  # what the save wrote beside easyllm.json: a re-save removes them
    )
    easyllm_version: str = field(default=__version__)

    def to_json(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in asdict(self).items()
            if value is not None or key in ("base_model",)
        }

    @classmethod
    def read(cls, folder: str | Path) -> SaveInfo:
        """The SaveInfo of a folder written by save(); ModelLoadError if it is not one."""
        path = Path(folder) / SAVE_INFO_FILE
        if not path.is_file():
            raise ModelLoadError(
                f"{folder} is not an easyllm save ({SAVE_INFO_FILE} is missing). To start from a "
                f"plain model folder use ModelRunner('{folder}')."
            )
        saved = json.loads(path.read_text())
        known = {key: saved[key] for key in cls.__dataclass_fields__ if key in saved}
        return cls(**known)


def save_model_folder(
    target: str | Path,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    info: SaveInfo,
    *,
    card: str,
    run_records: Callable[[Path], None] | None = None,
    rejects: Iterable[Reject] = (),
) -> Path:
    """Write the weights that differ from the base, the tokenizer, the card and easyllm.json (last).

    An adapter is saved when the model has one; full weights only when `info` names no base
    model to rebuild from (full fine-tuning). An untrained LoRA runner saves no weights at all.
    `run_records` writes a finished run's metrics and loss plot into the folder being staged.
    """
    target = Path(target)
    with staged_folder(target, prefix=".saving-") as staging:
        if model is not None and (info.adapter or info.base_model is None):
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if run_records is not None:
            run_records(staging)
        rejects = list(rejects)
        if rejects:
            write_rejects(rejects, staging / REJECTS_FILE)
        (staging / CARD_FILE).write_text(card)
        info.files = sorted(entry.name for entry in staging.iterdir())
        replace_save(staging, target)
        write_json_atomic(target / SAVE_INFO_FILE, info.to_json())
    return target


def merged_weights(model: PeftModel, load_base: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """The adapter merged into full-precision base weights (`load_base` loads them fresh).

    A QLoRA adapter learned its correction on top of the 4-bit weights, not the originals: it
    is merged into the de-quantized 4-bit weights, so the merged model answers like the adapter.
    """
    with tempfile.TemporaryDirectory() as adapter_dir:
        model.save_pretrained(adapter_dir)
        base = load_base()
        if is_4bit(without_adapter(model)):
            copy_dequantized_weights(without_adapter(model), base)
        return load_adapter(base, adapter_dir, trainable=False).merge_and_unload()


def save_merged_folder(
    target: str | Path,
    merged: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """A plain transformers folder: merged weights, tokenizer, what `extra` writes (parity.json)."""
    target = Path(target)
    with staged_folder(target, prefix=".merging-") as staging:
        if extra is not None:
            extra(staging)
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        replace_save(staging, target, stale=ADAPTER_FILES)
    return target


def replace_save(staging: Path, target: Path, stale: tuple[str, ...] = ()) -> None:
    """Move a staged save into `target`; remove what an earlier save wrote and this one did not.

    The old easyllm.json goes first, so the folder never claims a complete save midway; files
    that are not easyllm's (any other file in the folder) are left alone. `stale`: names removed
    in any case (a merged folder must not keep an adapter transformers would apply on top).
    """
    earlier = _earlier_save(target)
    (target / SAVE_INFO_FILE).unlink(missing_ok=True)
    written = {entry.name for entry in staging.iterdir()}
    move_into(staging, target)
    for name in (earlier | set(stale)) - written:
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _earlier_save(target: Path) -> set[str]:
    """The entries an earlier easyllm save wrote in `target` (none if it holds no save)."""
    path = target / SAVE_INFO_FILE
    if not path.is_file():
        return set()
    listed = json.loads(path.read_text()).get("files")
    if listed is not None:
        return set(listed)
    # saves from before easyllm.json listed its files: what a save can write
    return {
        entry.name
        for entry in target.iterdir()
        if entry.name in SAVED_FILES
        or entry.name.startswith(("adapter_model", "model-", "pytorch_model"))
    }
