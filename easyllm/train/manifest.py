"""The manifest: what a checkpoint was trained on, so a resumed run continues the same run.

It fingerprints the data, tokenizer, template and settings; resuming after one of them
changed would silently continue a different run, so it is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..fingerprints import dataset_fingerprint, digest, tokenizer_fingerprint
from ..version import __version__
from .distributed import distributed, is_main_process, shared_state
from .settings import SETTINGS_FIELDS, TrainSettings

if TYPE_CHECKING:
    from ..data.prepared import PreparedData

# Written last: a checkpoint without it is not ours or not complete.
MANIFEST_FILE = "easyllm-checkpoint.json"
# Options that change how a run is recorded, not what it learns: a resumed run may change them.
_BOOKKEEPING = (
    "output_dir",
    "logging_",
    "save_",
    "eval_",
    "per_device_eval_batch_size",
    "disable_tqdm",
    "report_to",
    "run_name",
    "push_to_hub",
    "hub_",
    "log_level",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
)
_CHANGES = {
    "data": "the training data (its encoded examples or max_length)",
    "tokenizer": "the tokenizer (vocabulary, merges or special tokens)",
    "template": "the chat template",
}


def resumable_settings(settings: TrainSettings, seed: int) -> dict[str, Any]:
    """The settings that decide what a run learns (not bookkeeping such as logging or saving)."""
    values = {
        **{k: getattr(settings, k) for k in SETTINGS_FIELDS},
        **settings.trainer_args,
        "seed": seed,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
    }
    kept = {k: v for k, v in values.items() if not k.startswith(_BOOKKEEPING)}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def build_manifest(
    data: PreparedData, tokenizer, template: str | None, settings: dict[str, Any]
) -> dict[str, Any]:
    """Fingerprints of all a resumed run must share with the checkpoint (see `check_resume`)."""
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
    """Every process prepares its own data: refuse to train if any got other rows or settings."""
    if not distributed():
        return
    from accelerate.utils import gather_object

    shared_state()
    seen = gather_object([manifest["fingerprints"]])
    differing = sorted({key for prints in seen for key in prints if prints[key] != seen[0][key]})
    if differing:
        raise ConfigError(
            f"The {len(seen)} processes prepared different {', '.join(differing)}. Give every "
            "process the same files, options and seed (load_data must be deterministic)."
        )


def check_resume(checkpoint: Path, manifest: dict[str, Any], *, force: bool = False) -> None:
    """Refuse to resume if data, tokenizer, template or settings differ from the checkpoint's."""
    saved = json.loads((checkpoint / MANIFEST_FILE).read_text())
    now, then = manifest["fingerprints"], saved.get("fingerprints", {})
    changed = [what for what in now if then.get(what) != now[what]]
    if not changed:
        return
    lines = [_CHANGES[what] for what in changed if what in _CHANGES]
    if "settings" in changed:
        old, new = saved.get("settings", {}), manifest["settings"]
        lines += [
            f"setting {key}: {old.get(key, '(unset)')!r} then, {new.get(key, '(unset)')!r} now"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
    listed = "\n  ".join(lines)
    message = f"{checkpoint} was written with different {', '.join(changed)}:\n  {listed}"
    if force:
        if is_main_process():
            print(f"easyllm: WARNING: resuming anyway (resume='force'). {message}")
        return
    raise ConfigError(
        message + "\nResume with the same data and settings, pass resume='force' to continue "
        "anyway, or start a new run (another output_dir, or overwrite=True)."
    )
