"""Deterministic train/validation split."""

from __future__ import annotations

import random
from typing import TypeVar

from ..errors import ConfigError

T = TypeVar("T")


def train_val_split(items: list[T], val_size: float | int, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with `seed` and hold out `val_size` (a fraction below 1, or a count).

    The same items, size and seed always give the same split. At least one item stays in
    training; a fraction that rounds to zero holds out one item when there are two or more.
    """
    if isinstance(val_size, bool) or val_size < 0:
        raise ConfigError(
            f"val_size must be a fraction in [0, 1) or a count >= 0, got {val_size!r}"
        )
    if isinstance(val_size, float) and val_size >= 1:
        raise ConfigError(
            f"val_size={val_size} would hold out everything; use a fraction below 1 or a count"
        )
    if val_size == 0 or len(items) < 2:
        return list(items), []
    count = val_size if isinstance(val_size, int) else max(1, round(len(items) * val_size))
    count = min(count, len(items) - 1)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:count])
    train = [item for index, item in enumerate(items) if index not in held_out]
    val = [item for index, item in enumerate(items) if index in held_out]
    return train, val
