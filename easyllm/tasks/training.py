"""A task's trainer for one run: checked TrainingArguments, then the task's Trainer, resumable.

`ModelRunner.train()` writes reproduce.json between the two steps, after the disk check and
before the trainer exists, so that a run which crashes is recorded too; then it runs the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..adapters import count_parameters
from ..data.prepared import PreparedData
from ..notebook import LiveLossPlot, in_notebook
from ..train.arguments import run_arguments
from ..train.checkpoints import make_resumable
from ..train.distributed import is_main_process, on_main_process
from ..train.run_folder import RunFolder, check_free_space
from ..train.settings import TrainSettings
from .base import Task


def checked_arguments(
    settings: TrainSettings, folder: Path, seed: int, model: PreTrainedModel, data: PreparedData
) -> TrainingArguments:
    """The run's TrainingArguments; ConfigError first if `folder`'s disk cannot hold the run."""
    args = run_arguments(
        settings,
        str(folder),
        seed,
        data.validation is not None,
        model_config=model.config,
        longest_example=data.longest_example,
    )
    on_main_process(check_free_space, folder, model, args)
    return args


def resumable_trainer(
    task: Task,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    args: TrainingArguments,
    settings: TrainSettings,
    manifest: dict[str, Any],
    run: RunFolder,
) -> tuple[Trainer, int]:
    """The task's trainer, resumable from `run`'s checkpoint, and the count of trained parameters.

    Says what is trained and where the run is saved; in a notebook, the loss is plotted live.
    """
    trainable, total = count_parameters(model)
    if is_main_process():
        start = f"; resuming from {run.resume_from.name}" if run.resume_from else ""
        print(
            f"easyllm: {settings.method} training {trainable:,} of {total:,} parameters; "
            f"the run is saved in {run.path}{start}"
        )
    trainer = task.build_trainer(model, tokenizer, data, args, settings)
    trainer = make_resumable(trainer, manifest, run.resume_from)
    if in_notebook():
        trainer.add_callback(LiveLossPlot())
    return trainer, trainable
