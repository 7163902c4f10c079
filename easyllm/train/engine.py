"""Run the transformers Trainer and record what happened: metrics and a loss curve."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback

from ..notebook import loss_figure
from .attention import packed_attention
from .checkpoints import ResumableMixin
from .compilation import compiled_layers, should_compile
from .loss import trained_token_loss
from .resources import release_freed_activations
from .run_folder import unlock_run

if TYPE_CHECKING:
    from ..data.prepared import PreparedData


@dataclass
class TrainResult:
    """What `ModelRunner.train()` returns: the metrics and where the run was written."""

    metrics: dict[str, float]
    output_dir: Path
    log_history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.metrics.items()
        )
        return f"TrainResult({shown}; saved in {self.output_dir})"

    def _repr_html_(self) -> str:
        from ..notebook import html_table

        return html_table({**self.metrics, "saved in": str(self.output_dir)}, "TrainResult")


def run_trainer(
    trainer: Trainer,
    data: PreparedData,
    *,
    resume_from: str | os.PathLike | None = None,
    compile: bool | None = None,
) -> TrainResult:
    """Train (from `resume_from`, a checkpoint folder) and collect the training metrics.

    Held-out metrics are the task's `evaluate`. Ctrl-C (SIGINT) or SIGTERM stops after the current
    step, writes a checkpoint and raises KeyboardInterrupt saying how to resume. `compile`: compile
    the decoder layers (None: for a long enough run of easyllm's own loss, see compilation.py).
    """
    resumed_at = _checkpoint_step(resume_from)  # read now: rotation may delete that checkpoint
    if compile is None:
        compile = isinstance(trainer, TrainedTokenTrainer) and should_compile(
            trainer.model, _training_tokens(trainer, data)
        )
    if trainer.args.device.type == "cpu":
        release_freed_activations()
    stop = StopOnSignal(announce=trainer.is_world_process_zero())
    trainer.add_callback(stop)
    try:
        per_example = getattr(trainer, "per_example_attention", False)
        with (
            stop.listening(),
            packed_attention(trainer.model, per_example),
            compiled_layers(trainer.model, compile) as compiled,
        ):
            if compiled and trainer.is_world_process_zero():
                print(
                    f"easyllm: compiling the {compiled} decoder layers and the loss for faster "
                    "steps (compile=False turns it off)"
                )
            if isinstance(trainer, TrainedTokenTrainer):
                trainer.compiled = bool(compiled)
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        trainer.remove_callback(stop)
        if isinstance(trainer, TrainedTokenTrainer):
            trainer.compiled = False
        unlock_run(trainer.args.output_dir)  # another process may continue or replace the run now
    if stop.stopped and trainer.state.global_step < trainer.state.max_steps:
        folder = Path(trainer.args.output_dir)
        checkpoint = folder / f"checkpoint-{trainer.state.global_step}"
        raise KeyboardInterrupt(
            f"Training stopped by {stop.signal_name} at step {trainer.state.global_step} of "
            f"{trainer.state.max_steps}; {checkpoint} holds everything needed to continue. "
            "Resume with the same data and settings: "
            f"runner.train(output_dir={str(folder)!r}, resume=True, ...)"
        )
    metrics: dict[str, float] = {
        k: v for k, v in output.metrics.items() if isinstance(v, (int, float))
    }
    metrics["train_loss"] = _whole_run_loss(trainer, output.training_loss, resumed_at)
    metrics["train_examples"] = len(data.train)
    metrics["global_step"] = output.global_step
    return TrainResult(metrics, Path(trainer.args.output_dir), list(trainer.state.log_history))


def _training_tokens(trainer: Trainer, data: PreparedData) -> int:
    """Tokens the run will train on: every epoch of the data, or max_steps batches of it."""
    if "input_ids" not in data.train.column_names or len(data.train) == 0:
        return 0
    per_example = sum(len(ids) for ids in data.train["input_ids"]) / len(data.train)
    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return int(args.max_steps * batch * per_example)
    return int(per_example * len(data.train) * args.num_train_epochs)


def _checkpoint_step(checkpoint: str | os.PathLike | None) -> int:
    if checkpoint is None:
        return 0
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]


def _whole_run_loss(trainer: Trainer, session_loss: float, resumed_at: int) -> float:
    """A resumed Trainer averages only the steps it ran itself: add the logged steps before them."""
    if resumed_at == 0:
        return session_loss
    history = trainer.state.log_history
    logged = sorted(
        (e["step"], e["loss"]) for e in history if "loss" in e and e["step"] <= resumed_at
    )
    total, last = 0.0, 0
    for step, loss in logged:
        total, last = total + loss * (step - last), step
    session_steps = trainer.state.global_step - resumed_at
    return (total + session_loss * session_steps) / max(last + session_steps, 1)


def write_run_records(result: TrainResult, folder: Path) -> None:
    """metrics.json and loss.png beside the saved model."""
    (folder / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    plot_loss(result.log_history, folder / "loss.png")


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = loss_figure(log_history)
    figure.savefig(path, dpi=100)
    plt.close(figure)


class StopOnSignal(TrainerCallback):
    """Turns Ctrl-C (SIGINT) or SIGTERM into "checkpoint after this step and stop".

    A second Ctrl-C stops at once. Stopping between steps never leaves half-updated weights; with
    several processes they agree to stop at the same step (each would otherwise wait forever for
    the others).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # Launchers (torchrun) forward the terminal's Ctrl-C: one press may arrive twice.
    SAME_PRESS_S = 1.0

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.signal_name: str | None = None
        self.stopped = False
        self._received_at = 0.0

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {number: signal.getsignal(number) for number in self.SIGNALS}
        for number in self.SIGNALS:
            signal.signal(number, self._receive)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _receive(self, number: int, frame) -> None:
        now = time.monotonic()
        if self.signal_name is not None:
            if now - self._received_at > self.SAME_PRESS_S:
                raise KeyboardInterrupt("stopped at once: no checkpoint for the current step")
            return
        self.signal_name, self._received_at = signal.Signals(number).name, now
        if self.announce:
            print(
                f"\neasyllm: {self.signal_name} received: stopping after this step and saving a "
                "checkpoint (press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.signal_name is not None
        if args.world_size > 1:
            flag = torch.tensor([float(requested)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            self.signal_name = self.signal_name or "a signal on another process"
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control


class TrainedTokenTrainer(ResumableMixin, Trainer):
    """The Trainer with one hook replaced: the loss only touches trained positions (see loss.py).

    Checkpoints are atomic and resumable (see checkpoints.py). `per_example_attention`: the
    collator's rows hold whole examples with restarting position ids, and training runs attention
    per example (attention.py) instead of through a block-diagonal mask.
    """

    def __init__(self, *args: Any, per_example_attention: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_example_attention = per_example_attention
        # run_trainer sets it while the decoder layers are compiled: the loss is too.
        self.compiled = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        wrapped = model is not self.model  # DDP, DeepSpeed or FSDP around it
        # accelerate applies bf16/fp16 autocast by wrapping model.forward, which this loss bypasses
        # (it calls the decoder and the output layer itself), so it enters autocast here.
        with self.accelerator.autocast():
            loss_sum, count = (
                _loss_through_wrapper(model, inputs, self.compiled)
                if wrapped
                else trained_token_loss(model, inputs, compiled=self.compiled)
            )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        if isinstance(denominator, torch.Tensor):
            denominator = denominator.to(loss_sum.device)
        loss = loss_sum / denominator
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # A share of all processes' tokens; DDP averages.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss


def _loss_through_wrapper(
    wrapper, inputs: dict[str, torch.Tensor], compiled: bool
) -> tuple[torch.Tensor, int]:
    """trained_token_loss as the wrapped model's forward, so DDP / DeepSpeed / FSDP do their part.

    The loss calls the decoder and the output layer itself; called beside the wrapper instead of
    through it, DDP would never synchronise the gradients of the processes.
    """
    inner = getattr(wrapper, "module", None)
    if inner is None:
        return trained_token_loss(wrapper, inputs, compiled=compiled)
    inner.forward = lambda **batch: trained_token_loss(inner, batch, compiled=compiled)
    try:
        return wrapper(**inputs)
    finally:
        del inner.forward
