"""What `load_data` hands the trainer: the options it read with, the encoded splits, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from .control_tokens import ControlTokenPolicy
from .encoding import TrainOn
from .rows import OnBadRows, ParsedRows, Reject


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
    # Generative tasks: the train split, too, keeps prompts and reference replies.
    keep_references: bool = False


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

    @classmethod
    def of(cls, parsed: ParsedRows, formats: dict[str, int], **counts: Any) -> DataReport:
        """A report that starts from what `parse_rows` read and skipped."""
        return cls(parsed.source, parsed.read, formats, rejected=parsed.summary(), **counts)

    def _repr_html_(self) -> str:
        from ..notebook import html_table

        lines = str(self).splitlines()
        return html_table(
            {
                line.split(":")[0].strip(): line.split(":", 1)[1].strip() if ":" in line else ""
                for line in lines[1:]
            },
            lines[0],
        )

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
            *(
                [f"  {self.rejected} (written to rejects.jsonl in the run folder)"]
                if self.rejected
                else []
            ),
            *([f"  template: {self.template}"] if self.template else []),
            f"  train: {self.train_examples} examples, validation: {self.val_examples}",
            f"  tokens: {self.total_tokens}, trained: {self.trained_tokens} ({share:.0%}); lengths "
            + " ".join(f"{k}={v}" for k, v in self.length_percentiles().items()),
        ]
        if self.unterminated_replies:
            lines.append(
                f"  WARNING: {self.unterminated_replies} trained repl(ies) lack their end-of-turn "
                "token (cut by max_length): the model does not learn to stop there"
            )
        else:
            lines.append("  every trained reply ends with its end-of-turn token")
        if self.truncated:
            lines.append(
                f"  truncated to max_length: {self.truncated} example(s), "
                f"{self.truncated_trained_tokens} reply token(s) lost"
            )
        if self.control_token_rows:
            lines.append(
                f"  {len(self.control_token_rows)} row(s) contain control-token strings "
                f"(on_control_tokens={self.control_token_policy!r}): "
                + "; ".join(self.control_token_rows[:3])
            )
        if self.dropped:
            lines.append(
                f"  skipped {len(self.dropped)} example(s): " + "; ".join(self.dropped[:5])
            )
        return "\n".join(lines)


@dataclass
class PreparedData:
    """What `Task.prepare` returns: encoded splits, the report, and the rows it skipped."""

    train: Dataset
    validation: Dataset | None
    report: DataReport
    # The longest an example may be (data/truncation.py cuts to it); packed rows hold this many.
    max_length: int = 1024
    rejects: list[Reject] = field(default_factory=list)  # rows skipped with on_bad_rows="skip"
    longest_example: int = 0  # tokens in the longest training example: bounds a step's activations
