"""What a task strategy is: how rows become model inputs, and how they are batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.control_tokens import ControlTokenPolicy
from ..data.encoding import ChatEncoder, TrainOn
from ..data.formats import OnBadRows
from ..data.loading import Record, Reject
from ..registry import Registry


@dataclass(frozen=True)
class DataOptions:
    """How `load_data` reads and splits rows (see `ModelRunner.load_data`)."""

    val_size: float | int = 0.1
    seed: int = 42
    max_length: int = 1024
    input_key: str | None = None
    output_key: str | None = None
    columns: dict[str, str] | None = None
    on_bad_rows: OnBadRows = "raise"
    train_on: TrainOn = "assistant"
    on_control_tokens: ControlTokenPolicy = "text"
    keep_references: bool = False  # generative tasks: the train split, too, keeps prompts and reference replies


@dataclass
class DataReport:
    """What happened to the user's rows: nothing is dropped without being counted here."""

    source: str
    rows: int
    formats: dict[str, int]
    rejected: str = ""  # summary of rows skipped with on_bad_rows="skip"
    template: str = ""  # which chat template rendered the rows, and why
    train_examples: int = 0
    val_examples: int = 0
    truncated: int = 0
    truncated_trained_tokens: int = 0  # reply tokens lost to max_length
    dropped: list[str] = field(default_factory=list)  # "origin: reason"
    control_token_rows: list[str] = field(default_factory=list)  # "origin: what was found"
    control_token_policy: str = "text"
    trained_tokens: int = 0
    total_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)
    unterminated_replies: int = 0  # trained replies whose end-of-turn token is not trained

    def _repr_html_(self) -> str:
        from ..notebook import html_table

        lines = str(self).splitlines()
        return html_table({line.split(":")[0].strip(): line.split(":", 1)[1].strip() if ":" in line else ""
                           for line in lines[1:]}, lines[0])

    def length_percentiles(self) -> dict[str, int]:
        ordered = sorted(self.lengths)
        if not ordered:
            return {}
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}

    def __str__(self) -> str:
        formats = ", ".join(f"{name} ({count})" for name, count in self.formats.items())
        share = self.trained_tokens / self.total_tokens if self.total_tokens else 0.0
        lines = [
            f"Read {self.rows} rows from {self.source} [{formats}]",
            *([f"  {self.rejected} (written to rejects.jsonl in the run folder)"] if self.rejected else []),
            *([f"  template: {self.template}"] if self.template else []),
            f"  train: {self.train_examples} examples, validation: {self.val_examples}",
            f"  tokens: {self.total_tokens}, trained: {self.trained_tokens} ({share:.0%}); lengths "
            + " ".join(f"{k}={v}" for k, v in self.length_percentiles().items()),
        ]
        if self.unterminated_replies:
            lines.append(f"  WARNING: {self.unterminated_replies} trained repl(ies) lack their end-of-turn "
                         "token (cut by max_length): the model does not learn to stop there")
        else:
            lines.append("  every trained reply ends with its end-of-turn token")
        if self.truncated:
            lines.append(f"  truncated to max_length: {self.truncated} example(s), "
                         f"{self.truncated_trained_tokens} reply token(s) lost")
        if self.control_token_rows:
            lines.append(f"  {len(self.control_token_rows)} row(s) contain control-token strings "
                         f"(on_control_tokens={self.control_token_policy!r}): "
                         + "; ".join(self.control_token_rows[:3]))
        if self.dropped:
            lines.append(f"  skipped {len(self.dropped)} example(s): " + "; ".join(self.dropped[:5]))
        return "\n".join(lines)


@dataclass
class PreparedData:
    train: Dataset
    validation: Dataset | None
    report: DataReport
    max_length: int = 1024  # the longest an example may be; packed rows hold up to this many tokens
    rejects: list[Reject] = field(default_factory=list)  # rows skipped with on_bad_rows="skip"


class Task(Protocol):
    """A task strategy: how rows become model inputs, which model and trainer, which metrics.

    Register one with `register_task(name, task)`; `ModelRunner(task=name)` then uses it.
    Helpers shared by causal-LM tasks live in `easyllm.tasks.causal`.

    Optional hooks, looked up by name: `references(dataset, limit) -> list[evaluation.Reference]`
    (generative tasks: the prompts and reference replies `evaluate()` generates from and scores
    against), `predict` (classify) and `score` (rm).
    """

    name: str
    peft_task_type: str  # LoraConfig task_type: "CAUSAL_LM", "SEQ_CLS", ...
    uses_chat_template: bool  # whether rows are rendered with the chat template
    generative: bool  # whether runner.generate() makes sense for this task's model

    def load_model(
        self, source: str, *, quantize_4bit: bool, trust_remote_code: bool, data: PreparedData | None
    ) -> PreTrainedModel | None:
        """The model to train; None if it can only be built once the data is known."""
        ...

    def prepare(self, records: list[Record], encoder: ChatEncoder | None, options: DataOptions) -> PreparedData:
        """Validate and encode rows; split off validation rows. Raise DataError naming bad rows."""
        ...

    def build_trainer(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
        args: TrainingArguments, settings: Any,
    ) -> Trainer:
        """A transformers (or TRL) Trainer ready to train on `data`."""
        ...

    def evaluate(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int
    ) -> dict[str, float]:
        """Held-out metrics on an encoded dataset."""
        ...


TASKS: Registry[Task] = Registry("task")


def register_task(name: str, task: Task, *, replace: bool = False) -> Task:
    """Make `task` available as `ModelRunner(task=name)`."""
    return TASKS.register(name, task, replace=replace)
