"""Run the transformers Trainer and record what happened: metrics and a loss curve."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer

from .loss import trained_token_loss
from .notebook import loss_figure

if TYPE_CHECKING:
    from .tasks.base import PreparedData


@dataclass
class TrainResult:
    """What `ModelRunner.train()` returns: the metrics and where the run was written."""

    metrics: dict[str, float]
    output_dir: Path
    log_history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.metrics.items())
        return f"TrainResult({shown}; saved in {self.output_dir})"

    def _repr_html_(self) -> str:
        from .notebook import html_table

        return html_table({**self.metrics, "saved in": str(self.output_dir)}, "TrainResult")


def run_trainer(trainer: Trainer, data: PreparedData) -> TrainResult:
    """Train and collect the training metrics (held-out metrics are the task's `evaluate`)."""
    output = trainer.train()
    metrics: dict[str, float] = {k: v for k, v in output.metrics.items() if isinstance(v, (int, float))}
    metrics["train_loss"] = output.training_loss
    metrics["train_examples"] = len(data.train)
    metrics["global_step"] = output.global_step
    return TrainResult(metrics, Path(trainer.args.output_dir), list(trainer.state.log_history))


def write_run_records(result: TrainResult, folder: Path) -> None:
    """metrics.json and loss.png beside the saved model."""
    (folder / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    plot_loss(result.log_history, folder / "loss.png")


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = loss_figure(log_history)
    figure.savefig(path, dpi=100)
    plt.close(figure)


class TrainedTokenTrainer(Trainer):
    """The Trainer with one hook replaced: the loss only touches trained positions (see loss.py)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = trained_token_loss(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        if isinstance(denominator, torch.Tensor):
            denominator = denominator.to(loss_sum.device)
        loss = loss_sum / denominator
        return (loss, {"loss": loss}) if return_outputs else loss
