"""Text classification: rows {"text", ["text_pair"], "label"} in, a sequence classifier out.

Works for encoders (BERT family: the pooled [CLS] feeds a new head) and decoders (Llama and
friends: the last non-pad token feeds a new `score` head, so the config needs a pad token id,
which the runner sets). The label set is read from the training rows, sorted so a run is
reproducible, and kept in the model config as id2label / label2id; rows keep their label as
written (str or int) and are mapped to ids with the *model's* labels, so data read later
(`runner.evaluate(data=...)`) is scored against what the model knows.

Rows keep their text until the trainer is built: a non-chat task's `prepare` gets no tokenizer.
`encode` then tokenizes training, evaluation and prediction text the same way. Reading the rows
lives in classify_rows.py, the model (loading, encoding, prediction) in classify_model.py; their
names are importable from here too.

>>> runner = ModelRunner("path/to/minilm", task="classify")
>>> runner.load_data("examples/data/intents.jsonl"); runner.train()
>>> runner.predict(["where is my parcel?"])
['track_order']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.truncation import Truncation, text_limit
from ..errors import DataError
from ..eval.metrics import ClassificationReport, confusion_matrix
from .base import Capabilities, ModelLoading, finish_prepared, register_task, split_rows
from .classify_model import (
    LENGTH_COLUMN,
    PaddedBatches,
    Text,
    checkpoint_labels,
    encode,
    labels_of,
    load_classifier,
    logits,
    predict,
    tokenize,
)
from .classify_rows import (
    FIELDS,
    KINDS,
    Label,
    Row,
    check_validation_labels,
    column_names,
    read_row,
    read_rows,
    rows_dataset,
)

__all__ = [
    "FIELDS",
    "KINDS",
    "LENGTH_COLUMN",
    "ClassifyReport",
    "ClassifyTask",
    "Label",
    "PaddedBatches",
    "Row",
    "Text",
    "check_validation_labels",
    "checkpoint_labels",
    "column_names",
    "encode",
    "labels_of",
    "load_classifier",
    "logits",
    "predict",
    "read_row",
    "read_rows",
    "rows_dataset",
    "tokenize",
]


@dataclass
class ClassifyReport(DataReport):
    """The data report, told in labels rather than trained tokens."""

    labels: dict[str, int] = field(default_factory=dict)  # training examples per label, in id order

    def __str__(self) -> str:
        formats = ", ".join(f"{name} ({count})" for name, count in self.formats.items())
        shown = ", ".join(f"{label} ({count})" for label, count in list(self.labels.items())[:12])
        more = f", ... {len(self.labels) - 12} more" if len(self.labels) > 12 else ""
        return "\n".join(
            [
                f"Read {self.rows} rows from {self.source} [{formats}]",
                *(
                    [f"  {self.rejected} (written to rejects.jsonl in the run folder)"]
                    if self.rejected
                    else []
                ),
                f"  train: {self.train_examples} examples, validation: {self.val_examples}",
                f"  {len(self.labels)} labels (training examples): {shown}{more}",
            ]
        )


class ClassifyTask:
    """Texts in, a label per text out: accuracy, macro-F1 and a confusion matrix as metrics."""

    name = "classify"
    capabilities = Capabilities(
        peft_task_type="SEQ_CLS",
        chat_template=False,
        generative=False,
        predicts=True,
        model_from_data=True,
        truncation=Truncation.TEXT_END,
    )

    def model_info(self, loading: ModelLoading, data: PreparedData | None) -> dict[str, Any] | None:
        """The labels: from the training rows, or from a checkpoint that already is a classifier."""
        if data is None:
            labels = checkpoint_labels(loading.source, loading.trust_remote_code)
            return None if labels is None else {"labels": labels}
        labels = sorted(set(data.train["label"]))
        if len(labels) < 2:
            raise DataError(
                f"Every training row of {data.report.source} has the label {labels[0]!r}: "
                "a classifier needs at least two labels."
            )
        return {"labels": labels}

    def saved_info(self, model: PreTrainedModel) -> dict[str, Any]:
        """What a save keeps to rebuild the head without the data: the labels, in id order."""
        return {"labels": labels_of(model)}

    def load_model(self, loading: ModelLoading, info: Mapping[str, Any]) -> PreTrainedModel:
        return load_classifier(loading, info["labels"])

    def prepare(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        encoder: Any,
        options: DataOptions,
    ) -> PreparedData:
        """Check every row and split off validation rows.

        The text stays text until it meets the model's labels (in `build_trainer`).
        """
        parsed = read_rows(records, options)
        rows = parsed.rows
        if not rows:
            raise DataError(f"No usable row in {parsed.source}: every row was rejected.")
        train_rows, val_rows = split_rows(rows, options)
        check_validation_labels(train_rows, val_rows)
        paired = rows[0].text_pair is not None
        counts = Counter(row.label for row in train_rows)
        report = ClassifyReport.of(
            parsed,
            {"text + text_pair + label" if paired else "text + label": len(rows)},
            labels={str(label): counts[label] for label in sorted(counts)},
        )
        validation = rows_dataset(val_rows, paired) if val_rows else None
        return finish_prepared(
            rows_dataset(train_rows, paired),
            validation,
            report,
            options,
            parsed.rejects,
            longest_example=options.max_length,
        )

    def build_trainer(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        args: TrainingArguments,
        settings: Any,
    ) -> Trainer:
        """A plain Trainer (the model's own loss); batches padded per batch, grouped by length."""
        labels, limit = labels_of(model), text_limit(tokenizer, data.max_length, model.config)
        validation = (
            encode(data.validation, tokenizer, labels, limit)
            if data.validation is not None
            else None
        )
        return Trainer(
            model=model,
            args=args,
            train_dataset=encode(data.train, tokenizer, labels, limit),
            eval_dataset=validation,
            data_collator=PaddedBatches(tokenizer),
            processing_class=tokenizer,
        )

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        batch_size: int,
        max_length: int,
    ) -> dict[str, float]:
        """eval_loss, accuracy, macro_f1, per-class scores and the confusion matrix as flat keys.

        `ClassificationReport.from_metrics(metrics)` turns them back into a table or a PNG.
        """
        labels = labels_of(model)
        rows = encode(dataset, tokenizer, labels, text_limit(tokenizer, max_length, model.config))
        scores = logits(model, tokenizer, rows, batch_size)
        truth = torch.tensor(rows["labels"], dtype=torch.long)
        loss = torch.nn.functional.cross_entropy(scores, truth).item() if len(rows) else 0.0
        predicted = scores.argmax(-1).tolist()
        report = ClassificationReport(
            tuple(map(str, labels)), confusion_matrix(truth.tolist(), predicted, range(len(labels)))
        )
        return {"eval_loss": loss, **report.as_metrics(), "eval_examples": len(rows)}

    predict = staticmethod(predict)


register_task("classify", ClassifyTask())
