"""Write a model folder (adapter or weights, tokenizer, easyllm.json) and publish it."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAVE_INFO_FILE = "easyllm.json"


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a staging folder that replaces `target` only once everything was written."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(backup / "old")
            staging.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_model_folder(folder: Path, model, tokenizer, info: dict[str, Any]) -> None:
    """Save the tokenizer, how to reload, and the weights that differ from the base model.

    An adapter is saved when the model has one; full weights only when `info` names no base
    model to rebuild from (full fine-tuning). An untrained LoRA runner saves no weights at all.
    """
    if info["adapter"] or info["base_model"] is None:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / SAVE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_save_info(folder: str | Path) -> dict[str, Any]:
    from .errors import ModelLoadError

    path = Path(folder) / SAVE_INFO_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{folder} is not an easyllm save ({SAVE_INFO_FILE} is missing). To start from a plain "
            f"model folder use ModelRunner('{folder}')."
        )
    return json.loads(path.read_text())


def push_folder_to_hub(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload a saved folder to the Hugging Face Hub; returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload with easyllm")
    return str(url)
