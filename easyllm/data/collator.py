"""Batching: pad token ids, labels and attention masks to the longest example in a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .encoding import IGNORE_INDEX


@dataclass
class PaddingCollator:
    """Right-pads `input_ids` with the pad token and `labels` with -100 (never trained)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(example["input_ids"]) for example in examples)
        input_ids, labels, attention = [], [], []
        for example in examples:
            ids = list(example["input_ids"])
            padding = longest - len(ids)
            input_ids.append(ids + [self.pad_token_id] * padding)
            labels.append(list(example["labels"]) + [IGNORE_INDEX] * padding)
            attention.append([1] * len(ids) + [0] * padding)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
        }
