"""What a task strategy is: how rows become model inputs, which model and trainer, which metrics.

A task declares what it can do in `capabilities`; the runner reads the declaration and never
probes for methods. Optional abilities are separate protocols (`Predicts`, `Scores`,
`HasReferences`, `BuildsModelFromData`), each promised by one capability flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.encoding import ChatEncoder
from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.rows import Reject
from ..data.split import train_val_split
from ..data.truncation import Truncation
from ..errors import DataError
from ..methods import Method
from ..registry import Registry

T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    """What a task declares about itself; the runner decides from this alone.

    `peft_task_type`: the LoraConfig task type ("CAUSAL_LM", "SEQ_CLS"). `chat_template`: rows
    are rendered with the chat template. `generative`: `generate()` makes sense. The rest each
    promise one protocol: `references` -> HasReferences (evaluate() generates and scores
    replies), `predicts` -> Predicts, `scores` -> Scores, `model_from_data` ->
    BuildsModelFromData (the model's shape comes from the data, e.g. its labels).
    `previews`: encoded rows hold `input_ids`/`labels` or `prompt_ids` plus one reply, which
    `runner.preview()` shows through `Task.preview_ids`.
    """

    peft_task_type: str = "CAUSAL_LM"
    chat_template: bool = True
    generative: bool = True
    references: bool = False
    predicts: bool = False
    scores: bool = False
    model_from_data: bool = False
    previews: bool = False
    # how examples are fitted into max_length (data/truncation.py)
    truncation: Truncation | None = None


@dataclass(frozen=True)
class ModelLoading:
    """How the runner asks for a model: from where, by which method, with remote code or not."""

    source: str
    method: Method
    trust_remote_code: bool = False

    def options(self, keep_full_precision: Sequence[str] = ()) -> dict[str, Any]:
        """`from_pretrained` keyword arguments (the method's dtype or 4-bit config, remote code)."""
        return {
            **self.method.load_options(keep_full_precision),
            "trust_remote_code": self.trust_remote_code,
        }


class Task(Protocol):
    """A task strategy: `register_task(name, task)` makes it `ModelRunner(task=name)`.

    Helpers shared by causal-LM tasks live in `easyllm.tasks.causal`; `split_rows` and
    `finish_prepared` are the shared skeleton of `prepare`.
    """

    name: str
    capabilities: Capabilities

    def load_model(self, loading: ModelLoading, info: Mapping[str, Any]) -> PreTrainedModel:
        """The model to train. `info`: what a `model_from_data` task needs (else empty)."""
        ...

    def prepare(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder | None,
        options: DataOptions,
    ) -> PreparedData:
        """Validate, encode, cut rows to options.max_length (truncation.py); split off val rows."""
        ...

    def build_trainer(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        args: TrainingArguments,
        settings: Any,
    ) -> Trainer:
        """A transformers (or TRL) Trainer ready to train on `data`."""
        ...

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        batch_size: int,
        max_length: int,
    ) -> dict[str, float]:
        """Held-out metrics on an encoded dataset (`max_length`: what the model was trained at)."""
        ...


class HasReferences(Protocol):
    """capabilities.references: the prompts evaluate() answers and the replies it scores against."""

    def references(self, dataset: Dataset, limit: int) -> list[Any]: ...


class Previews(Protocol):
    """capabilities.previews: the ids and labels `runner.preview()` shows for one encoded row."""

    def preview_ids(self, row: Mapping[str, Any]) -> tuple[list[int], list[int]]: ...


class Predicts(Protocol):
    """capabilities.predicts: a label per text (`runner.predict`)."""

    def predict(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[Any],
        *,
        max_length: int,
        batch_size: int,
        return_scores: bool,
    ) -> list[Any]: ...


class Scores(Protocol):
    """capabilities.scores: a reward per reply or conversation (`runner.score`)."""

    def score(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder,
        items: Sequence[Any],
        batch_size: int = 8,
    ) -> list[float]: ...


class BuildsModelFromData(Protocol):
    """capabilities.model_from_data: the model's shape comes from the data (classify: labels)."""

    def model_info(self, loading: ModelLoading, data: PreparedData | None) -> dict[str, Any] | None:
        """What `load_model` needs, from the data or from a checkpoint; None: not known yet."""
        ...

    def saved_info(self, model: PreTrainedModel) -> dict[str, Any]:
        """What a save must remember to rebuild the model without the data."""
        ...


TASKS: Registry[Task] = Registry("task")


def register_task(name: str, task: Task, *, replace: bool = False) -> Task:
    """Make `task` available as `ModelRunner(task=name)`."""
    return TASKS.register(name, task, replace=replace)


# -- the shared skeleton of prepare(): split, encode each split, check, count ----------------------
def split_rows(rows: list[T], options: DataOptions) -> tuple[list[T], list[T]]:
    """The deterministic train / validation split of `rows` (options.val_size, options.seed)."""
    return train_val_split(rows, options.val_size, options.seed)


def finish_prepared(
    train: Dataset,
    validation: Dataset | None,
    report: DataReport,
    options: DataOptions,
    rejects: list[Reject],
    *,
    longest_example: int,
    nothing_left: str = "No trainable example is left",
) -> PreparedData:
    """The PreparedData of encoded splits; a DataError (with the report) if no example is left."""
    if len(train) == 0:
        raise DataError(f"{nothing_left} in {report.source}:\n{report}")
    report.train_examples, report.val_examples = len(train), len(validation or [])
    return PreparedData(
        train,
        validation,
        report,
        options.max_length,
        rejects,
        longest_example=min(longest_example, options.max_length),
    )
