"""The one way easyllm writes what must be complete or absent: stage, flush, rename.

A kill, a full disk or a power cut at any moment leaves either the previous version or the new
one, never a mix: files are written into a hidden staging file or folder beside the target,
flushed to disk (`fsync`), and renamed into place (a rename within one filesystem is atomic).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run-folder file names: what a finished run holds besides the model.
METRICS_FILE = "metrics.json"
LOSS_PLOT_FILE = "loss.png"
REJECTS_FILE = "rejects.jsonl"
CARD_FILE = "README.md"


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk; best effort where the platform cannot (some folders)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folder itself."""
    for path in folder.rglob("*"):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` in one step: a reader sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, value: Any) -> Path:
    """`write_text_atomic` of indented JSON."""
    return write_text_atomic(
        path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"
    )


def publish_folder(staged: Path, target: Path) -> None:
    """Flush `staged`, then put it at `target` (replacing a previous one) by renames only."""
    fsync_tree(staged)
    if target.exists():
        replaced = target.with_name(f".replaced-{target.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        target.rename(replaced)
        staged.rename(target)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        staged.rename(target)
    fsync_path(target.parent)


def publish_new_folder(staged: Path, target: Path) -> bool:
    """Flush `staged` and rename it to `target`, unless another process put one there first (False).

    For caches that many processes may fill at once: the first complete copy wins.
    """
    fsync_tree(staged)
    try:
        staged.rename(target)
    except OSError:
        if target.exists():
            return False
        raise
    fsync_path(target.parent)
    return True


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, prefix: str = ".staging-") -> Iterator[Path]:
    """A hidden folder inside `target` to write a save into; removed when the block ends.

    The caller moves the finished files into `target` (`move_into`, or records.folder's
    `replace_save`, which writes the easyllm.json marker only after everything else); on an
    error nothing has been moved.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target`, replacing same-named ones."""
    fsync_tree(staging)
    for entry in staging.iterdir():
        destination = target / entry.name
        if destination.is_dir() and entry.is_dir():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    fsync_path(target)
