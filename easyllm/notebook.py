"""Jupyter niceties: HTML tables and a loss curve that updates in place while training."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import TrainerCallback


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not in a terminal IPython or a plain script)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def html_table(rows: Mapping[str, Any], title: str | None = None) -> str:
    """A two-column HTML table; floats shown with 4 significant digits."""
    cells = "".join(f"<tr>{_cell(k)}{_cell(v)}</tr>" for k, v in rows.items())
    return f"<table>{_caption(title)}{cells}</table>"


def html_grid(
    header: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> str:
    """An HTML table with a header row (e.g. two models' metrics side by side), as html_table."""
    head = (
        "<tr>"
        + "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in header)
        + "</tr>"
    )
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table>{_caption(title)}{head}{body}</table>"


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"<td style='text-align:left; white-space:pre-wrap'>{html.escape(text)}</td>"


def _caption(title: str | None) -> str:
    return (
        f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    )


class Metrics(dict):
    """A plain dict of metrics that renders as a table in Jupyter."""

    def _repr_html_(self) -> str:
        return html_table(self, "metrics")


def loss_figure(log_history: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure, axes = plt.subplots(figsize=(6, 4))
    if train:
        axes.plot(*zip(*train), label="train loss")
    if evals:
        axes.plot(*zip(*evals), "o-", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    if train or evals:
        axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


class LiveLossPlot(TrainerCallback):
    """Redraws the train/eval loss curve in one notebook output while the Trainer logs."""

    def __init__(self) -> None:
        self._handle = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        import matplotlib.pyplot as plt
        from IPython.display import Image, display

        figure = loss_figure(state.log_history)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        image = Image(data=buffer.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


def runner_rows(runner: Any, *, details: bool = False) -> dict[str, Any]:
    """What a ModelRunner shows of itself: model, task, method, sizes; `details`: data, results."""
    from .adapters import count_parameters

    trainable, total = count_parameters(runner.model) if runner.model is not None else (0, 0)
    rows: dict[str, Any] = {
        "model": runner.model_name,
        "task": runner.task_name,
        "method": runner.settings.method,
        "parameters": f"{total:,}",
        "trainable": f"{trainable:,}",
    }
    if not details:
        return rows
    if runner.template is not None:
        rows["template"] = f"{runner.template.name} ({runner.template.reason})"
    if runner.data is not None:
        rows["train examples"] = runner.data.report.train_examples
        rows["validation examples"] = runner.data.report.val_examples
    if runner.last_result is not None:
        rows.update(runner.last_result.metrics)
    return rows


def runner_html(runner: Any) -> str:
    """A ModelRunner in Jupyter: a table of `runner_rows` with details."""
    return html_table(runner_rows(runner, details=True), "ModelRunner")


def runner_repr(runner: Any) -> str:
    """`repr(runner)`: one line with the model, task, method, sizes and training examples."""
    rows = runner_rows(runner)
    data = f", train={runner.data.report.train_examples}" if runner.data else ""
    return (
        f"ModelRunner(model={rows['model']!r}, task={rows['task']!r}, "
        f"method={rows['method']!r}, parameters={rows['parameters']}, "
        f"trainable={rows['trainable']}{data})"
    )
