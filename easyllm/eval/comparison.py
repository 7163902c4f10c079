"""`ModelRunner.evaluate()`'s body: which rows, who answers beside the model, and the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from datasets import Dataset

from ..data.loading import read_source
from ..data.prepared import DataOptions
from ..errors import UsageError
from ..methods import has_adapter
from ..train.distributed import is_main_process
from .evaluation import EVALUATION_FILE, Answerer, EvalResult, Reference, compare_replies

if TYPE_CHECKING:
    from ..runner import ModelRunner
    from ..tasks.base import Task


def references(task: Task, dataset: Dataset, max_samples: int | None) -> list[Reference]:
    """The first `max_samples` held-out prompts and reference replies (None: all), else []."""
    if not task.capabilities.references:
        return []
    if max_samples is not None and max_samples < 1:
        raise UsageError(
            f"max_samples={max_samples}: pass a count of at least 1, None for all rows, "
            "or generate=False to skip generated replies."
        )
    limit = len(dataset) if max_samples is None else max_samples
    return cast(Any, task).references(dataset, limit)


def comparison(runner: ModelRunner, compare: Any, generate: bool) -> Answerer | None:
    """Who answers beside `runner`'s model: its base (adapter off), another runner, or nobody."""
    if compare is False:
        return None
    if compare is True:
        if not has_adapter(runner.model):
            raise UsageError(
                "compare=True compares the fine-tuned model with its base by turning the adapter "
                f"off, but this model has no adapter (method='{runner.settings.method}', or not "
                "trained yet). Pass compare=ModelRunner(<base model>) to compare with another "
                "model."
            )
        return Answerer(
            "base (adapter off)", runner.model, runner.encoder, runner.model.disable_adapter
        )
    from ..runner import ModelRunner  # the facade imports this module

    if not isinstance(compare, ModelRunner):
        raise UsageError(
            f"compare={compare!r}: pass True (the base model, adapter off) or another ModelRunner."
        )
    if not generate or not runner.task.capabilities.references:
        reason = (
            "generate=False"
            if generate is False
            else f"task '{runner.task_name}' has no reference replies"
        )
        raise UsageError(
            f"compare=<ModelRunner> compares generated replies, but {reason}: "
            "use a chat task (sft) with generate=True."
        )
    return Answerer(compare.model_name, compare._require_model(), compare._require_generative())


def evaluate_runner(
    runner: ModelRunner,
    data: Any,
    *,
    batch_size: int,
    max_samples: int | None,
    max_new_tokens: int | None,
    generate: bool,
    compare: Any,
) -> EvalResult:
    """`ModelRunner.evaluate`: the task's metrics, then generated replies scored (and compared).

    With a run folder, the result is also written to its evaluation.json.
    """
    dataset, described = eval_dataset(runner, data)
    model = runner._require_model()
    other = comparison(runner, compare, generate)
    prefix = "" if other is None else "base_" if compare is True else "compare_"
    metrics = task_metrics(runner, model, dataset, batch_size)
    result = EvalResult(
        metrics, data=described, compared_with=other.label if other else None, prefix=prefix
    )
    # the same weights and tokens with the adapter off: its loss means the same
    if compare is True:
        with other.context():
            base = task_metrics(runner, model, dataset, batch_size)
            result.update({prefix + k: v for k, v in base.items()})
    held_out = references(runner.task, dataset, max_samples) if generate else []
    if held_out:
        metrics, result.samples = compare_replies(
            Answerer("model", model, runner.encoder),
            other,
            held_out,
            prefix=prefix,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        result.update(metrics)
    if runner.run_dir is not None and is_main_process():
        result.save(runner.run_dir / EVALUATION_FILE)
    return result


def task_metrics(runner: ModelRunner, model, dataset: Dataset, batch_size: int) -> dict[str, float]:
    """The task's own metrics of `model` on encoded rows, cut at the length it was trained at."""
    max_length = runner.data_options.max_length
    return runner.task.evaluate(model, runner.tokenizer, dataset, batch_size, max_length)


def eval_dataset(runner: ModelRunner, data: Any) -> tuple[Dataset, str]:
    """The encoded rows `evaluate()` scores and where they came from (cut as training data was)."""
    if data is not None:
        options = DataOptions(
            val_size=0,
            seed=runner.seed,
            max_length=runner.data_options.max_length,
            keep_references=True,
        )
        prepared = runner.task.prepare(read_source(data), runner.tokenizer, runner.encoder, options)
        return prepared.train, prepared.report.source
    if runner.data is not None and runner.data.validation is not None:
        return runner.data.validation, f"the validation split of {runner.data.report.source}"
    raise UsageError(
        "Nothing to evaluate: call load_data(..., val_size=0.1) first to hold out rows, "
        "or pass data=... to evaluate()."
    )
