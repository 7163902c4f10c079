"""Padding-free packing: several examples share one row and never attend to each other.

The examples of a batch are placed into rows of at most `max_length` tokens by
best-fit-decreasing. Each
example's position ids restart at 0; transformers reads restarting position ids (with no
attention mask) as packed sequences and builds a block-diagonal causal mask, so attention
never crosses an example boundary. The first label of every example is -100: the token
before it belongs to another example and must not learn to predict it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch

from .encoding import IGNORE_INDEX


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length <= capacity, longest items first.

    Each item goes into the fullest bin that still has room (a sorted list of free space
    makes this O(n log n)). Items longer than `capacity` get a bin of their own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    for item in order:
        size = lengths[item]
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, index = free.pop(slot)
            bins[index].append(item)
            bisect.insort(free, (space - size, index))
        else:
            bins.append([item])
            bisect.insort(free, (capacity - size, len(bins) - 1))
    return bins


def pack_row(examples: list[dict[str, Any]]) -> dict[str, list[int]]:
    """One row: examples concatenated, position ids restarting, each first label ignored."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        row["input_ids"] += list(example["input_ids"])
        row["labels"] += [IGNORE_INDEX] + list(example["labels"][1:])
        row["position_ids"] += list(range(len(example["input_ids"])))
    return row


@dataclass
class PackedCollator:
    """Packs a batch of examples into as few rows of at most `max_length` tokens as fit.

    A batch holds the same examples as without packing (so steps, loss and learning rate mean
    the same thing); only the padding between them is gone. Rows are padded to the longest
    row without an attention mask: the padding continues as one more "example" with its own
    restarting position ids, so real tokens never see it, and its labels are -100.
    With `one_row`, for models whose attention runs per example (attention.py), the whole
    batch is a single row and has no padding at all.
    """

    pad_token_id: int
    max_length: int
    # The whole batch in one row: for per-example attention (see attention.py).
    one_row: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.one_row:
            return {
                key: torch.tensor([value], dtype=torch.long)
                for key, value in pack_row(examples).items()
            }
        lengths = [len(example["input_ids"]) for example in examples]
        rows = [
            pack_row([examples[i] for i in sorted(group)])
            for group in best_fit_decreasing(lengths, self.max_length)
        ]
        longest = max(len(row["input_ids"]) for row in rows)
        input_ids, labels, positions = [], [], []
        for row in rows:
            padding = longest - len(row["input_ids"])
            input_ids.append(row["input_ids"] + [self.pad_token_id] * padding)
            labels.append(row["labels"] + [IGNORE_INDEX] * padding)
            positions.append(row["position_ids"] + list(range(padding)))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }
