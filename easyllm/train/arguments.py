"""The TrainingArguments of a run: the settings' defaults plus what reliable runs need."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from transformers import TrainingArguments

from .checkpoints import KEPT_CHECKPOINTS
from .distributed import distributed
from .settings import TrainSettings

CHECKPOINTS_PER_EPOCH = 4


def run_arguments(settings: TrainSettings, *args: Any, **kwargs: Any) -> TrainingArguments:
    """`settings.training_arguments(...)` plus what reliable runs need, unless the user chose.

    Checkpoints about 4 times per epoch, keeping 2; and, under torchrun on a machine without a
    GPU, `use_cpu=True`: without it every CPU process would silently train a model of its own.
    """
    chosen = settings.trainer_args
    defaults: dict[str, Any] = {"save_total_limit": KEPT_CHECKPOINTS}
    if "save_strategy" not in chosen and not chosen.get("load_best_model_at_end"):
        defaults["save_strategy"] = "steps"
    if distributed() and not torch.cuda.is_available():
        defaults["use_cpu"] = True
    with_defaults = dataclasses.replace(settings, trainer_args={**defaults, **chosen})
    arguments = with_defaults.training_arguments(*args, **kwargs)
    if arguments.save_strategy == "steps" and "save_steps" not in chosen:
        # Below 1, the Trainer reads save_steps as a share of all steps.
        share = 1 / CHECKPOINTS_PER_EPOCH
        epochs = arguments.num_train_epochs if arguments.max_steps <= 0 else 1
        arguments.save_steps = min(share, share / epochs)
    return arguments
