"""Digests of what a run depends on: data rows, tokenizer, any JSON value (a leaf module).

They decide whether a checkpoint may be resumed, whether an encoded cache entry is still
valid, and what reproduce.json records.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset


def digest(value: Any) -> str:
    """A short, stable hash of any JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hash_column(hasher, array) -> None:
    import pyarrow as pa

    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        hasher.update(np.asarray(array.value_lengths().fill_null(-1)).tobytes())
        _hash_column(hasher, array.flatten())
    elif (
        pa.types.is_integer(array.type)
        or pa.types.is_floating(array.type)
        or pa.types.is_boolean(array.type)
    ):
        hasher.update(array.to_numpy(zero_copy_only=False).tobytes())
    else:
        hasher.update(json.dumps(array.to_pylist(), default=str).encode())


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the encoded rows themselves (datasets' own fingerprint may be random in memory)."""
    hasher = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=4096):
        for name in sorted(batch.column_names):
            hasher.update(name.encode())
            _hash_column(hasher, batch.column(name).combine_chunks())
    return hasher.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {
            k: v
            for k, v in json.loads(backend.to_str()).items()
            if k not in ("truncation", "padding")
        }
    else:
        spec = {"vocab": tokenizer.get_vocab()}
    spec["special_tokens"] = {
        name: str(value) for name, value in tokenizer.special_tokens_map.items()
    }
    return digest(spec)
