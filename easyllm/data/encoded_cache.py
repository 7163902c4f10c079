"""Encoded examples kept on disk, so a second run on the same data starts training at once.

Tokenizing and masking a large file takes minutes; the result depends only on the rows, the
tokenizer, the chat template and the encoding options, so it is stored under a hash of them in
`$EASYLLM_HOME/encoded/<key>/` as a datasets Arrow folder (memory-mapped when read back) next to
the counts the data report needs. Entries are written to a temporary folder and renamed, so an
interrupted run leaves none half-written. Delete the folder to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets.config
from datasets import Dataset
from datasets.utils.tqdm import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)

from ..files import publish_new_folder
from ..fingerprints import digest, tokenizer_fingerprint
from ..modeling import easyllm_home
from ..version import __version__
from .conversation import Conversation
from .encoding import ChatEncoder

Encoding = tuple[dict[str, list], dict[str, Any]]  # (columns, counts for the data report)


def encoder_fingerprint(encoder: ChatEncoder) -> str:
    """What encoding depends on besides the rows (hashing a tokenizer takes ~0.4 s: do it once)."""
    return digest(
        {
            "easyllm": __version__,
            "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
            "template": encoder.chat_template or encoder.tokenizer.chat_template,
            "train_on": encoder.train_on,
            "content_as_text": encoder.content_as_text,
        }
    )


def encoding_key(conversations: Sequence[Conversation], encoder: str, **options: Any) -> str:
    """A hash of all the encoded rows depend on: the rows, `encoder_fingerprint`, the options."""
    rows = hashlib.sha256()
    for conversation in conversations:
        rows.update(
            json.dumps(
                [conversation.origin, conversation.messages, conversation.tools],
                sort_keys=True,
                default=str,
            ).encode()
        )
    return digest({"rows": rows.hexdigest(), "encoder": encoder, **options})


def cache_root() -> Path:
    return easyllm_home() / "encoded"


@contextlib.contextmanager
def _no_datasets_progress_bars():
    """Hide datasets' bars for the block (a cache write takes a moment and is no news), then put
    back what was set before: bars the user turned off stay off, bars on stay on, and an explicit
    `HF_DATASETS_DISABLE_PROGRESS_BARS` is left to decide."""
    if (
        are_progress_bars_disabled()
        or datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None
    ):
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _read(folder: Path) -> tuple[Dataset, dict[str, Any]] | None:
    """A stored entry, or None when there is none (or it is damaged: it is encoded again)."""
    try:
        return Dataset.load_from_disk(str(folder / "rows")), json.loads(
            (folder / "counts.json").read_text()
        )
    except (OSError, ValueError):
        return None


def cached_encoding(key: str, encode: Callable[[], Encoding]) -> tuple[Dataset, dict[str, Any]]:
    """The stored rows and counts for `key`, or `encode()`'s, stored for next time."""
    folder = cache_root() / key
    stored = _read(folder)
    if stored is not None:
        return stored
    columns, counts = encode()
    dataset = Dataset.from_dict(columns)
    staging = folder.with_name(f".{key}.{os.getpid()}")
    try:
        # a read-only or full disk, or another process storing it first: train without the cache
        with contextlib.suppress(OSError), _no_datasets_progress_bars():
            staging.mkdir(parents=True)
            dataset.save_to_disk(str(staging / "rows"))
            (staging / "counts.json").write_text(json.dumps(counts))
            publish_new_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset, counts
