"""Text classification: rows {"text", ["text_pair"], "label"} in, a sequence-classification model out.

Works for encoders (BERT family: the pooled [CLS] feeds a new head) and decoders (Llama and
friends: the last non-pad token feeds a new `score` head, so the config needs a pad token id,
which the runner sets). The label set is read from the training rows, sorted so a run is
reproducible, and kept in the model config as id2label / label2id; rows keep their label as
written (str or int) and are mapped to ids with the *model's* labels, so data read later
(`runner.evaluate(data=...)`) is scored against what the model knows.

Rows keep their text until the trainer is built: a non-chat task's `prepare` gets no tokenizer.
`encode` then tokenizes training, evaluation and prediction text the same way.

>>> runner = ModelRunner("path/to/minilm", task="classify")
>>> runner.load_data("examples/data/intents.jsonl"); runner.train()
>>> runner.predict(["where is my parcel?"])
['track_order']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.rows import (
    ParsedRows,
    Reject,
    RowProblem,
    check_bad_row_policy,
    parse_rows,
    raise_bad_rows,
    source_name,
    summarize_problems,
)
from ..data.truncation import Truncation, text_limit
from ..errors import ConfigError, DataError, UsageError
from ..eval.metrics import ClassificationReport, confusion_matrix
from ..methods import HEAD_MODULES
from ..modeling import explain_load_errors
from .base import Capabilities, ModelLoading, finish_prepared, register_task, split_rows

Label = str | int
Text = str | tuple[str, str]  # one text, or a (text, text_pair) pair
FIELDS = ("text", "text_pair", "label")
KINDS = {str: "string", int: "integer"}
LENGTH_COLUMN = (
    "length"  # TrainingArguments.length_column_name: the length-grouped sampler reads it
)


@dataclass(frozen=True)
class Row:
    text: str
    text_pair: str | None
    label: Label
    origin: str


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


# -- rows ------------------------------------------------------------------------------------
def column_names(options: DataOptions) -> dict[str, str]:
    """{task key: the row's column}; `input_key`/`output_key` name the text and label columns."""
    names = {
        "text": options.input_key or "text",
        "text_pair": "text_pair",
        "label": options.output_key or "label",
    }
    unknown = sorted(set(options.columns or {}) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"columns={options.columns}: classify reads the keys {', '.join(FIELDS)} (text_pair is "
            f"optional), not {unknown}. Map each to your column, e.g. "
            "columns={'text': 'sentence1', 'text_pair': 'sentence2', 'label': 'y'}."
        )
    return {**names, **(options.columns or {})}


def read_row(record: Record, columns: Mapping[str, str]) -> Row:
    """One record as a Row; RowProblem says what is wrong and the fix."""
    if record.problem:
        raise RowProblem("unreadable row", record.problem)
    row = record.row
    if not isinstance(row, Mapping):
        raise RowProblem(
            "not an object",
            f"expected an object with '{columns['text']}' and "
            f"'{columns['label']}', got {type(row).__name__}: {str(row)[:60]}",
        )
    pair = row.get(columns["text_pair"])
    return Row(
        _text(row, columns, "text"),
        None if pair is None else _text(row, columns, "text_pair"),
        _label(row, columns["label"]),
        record.origin,
    )


def _text(row: Mapping[str, Any], columns: Mapping[str, str], key: str) -> str:
    column = columns[key]
    value = _present(row, column, key)
    if not isinstance(value, str):
        raise RowProblem(
            "wrong type",
            f"'{column}' must be a string, got {type(value).__name__}: {str(value)[:60]}",
        )
    if not value.strip():
        raise RowProblem(f"empty {key}", f"'{column}' is empty; fill it in or drop the row")
    return value


def _present(row: Mapping[str, Any], column: str, key: str) -> Any:
    if column not in row:
        raise RowProblem(
            f"missing {key}",
            f"no '{column}' column (the row has {sorted(row)}); "
            f"name yours with columns={{'{key}': ...}}",
        )
    if row[column] is None:
        raise RowProblem(f"missing {key}", f"'{column}' is null; fill it in or drop the row")
    return row[column]


def _label(row: Mapping[str, Any], column: str) -> Label:
    value = _present(row, column, "label")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        whole = isinstance(value, float) and value.is_integer()
        hint = f" (write {value!r} as {int(value)} or '{int(value)}')" if whole else ""
        raise RowProblem(
            "bad label type",
            f"label {str(value)[:40]} is a {type(value).__name__}: a label "
            f"must be a string or an integer{hint}",
        )
    if isinstance(value, str) and not value.strip():
        raise RowProblem("empty label", f"'{column}' is empty; give the row its label or drop it")
    return value


def read_rows(records: list[Record], options: DataOptions) -> ParsedRows[Row]:
    """Valid rows and rejected ones; all rows must agree on having a text_pair and on the label type.

    Unlike other tasks, the rows must also agree with each other, so bad rows are raised (or
    skipped) only after that second look.
    """
    check_bad_row_policy(options.on_bad_rows)
    columns = column_names(options)
    parsed = parse_rows(records, lambda record: read_row(record, columns), on_bad_rows="skip")
    rows, rejects = parsed.rows, parsed.rejects
    paired = "text_pair" in (options.columns or {}) or any(
        row.text_pair is not None for row in rows
    )
    label_type = Counter(type(row.label) for row in rows).most_common(1)[0][0] if rows else str
    kept: list[Row] = []
    raw: dict[str, Any] = {}
    for row in rows:
        if paired and row.text_pair is None:
            problem = RowProblem(
                "missing text_pair",
                f"no '{columns['text_pair']}': other rows have one, and every row needs both texts",
            )
        elif not isinstance(row.label, label_type):
            problem = RowProblem(
                "mixed label types",
                f"most labels are {KINDS[label_type]}s but this one is "
                f"{row.label!r}; write every label the same way",
            )
        else:
            kept.append(row)
            continue
        raw = raw or {record.origin: record.row for record in records}
        rejects.append(Reject(row.origin, str(problem), raw[row.origin], problem.kind))
    if rejects and options.on_bad_rows == "raise":
        raise_bad_rows(rejects, parsed.where())
    return ParsedRows(kept, rejects, parsed.sources)


# -- encoding --------------------------------------------------------------------------------
def labels_of(model: PreTrainedModel) -> list[Label]:
    """The model's labels in id order (works through a PeftModel too)."""
    config = model.config
    return [config.id2label[i] for i in range(config.num_labels)]


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
) -> dict[str, list[list[int]]]:
    """Token ids (and masks) for texts or pairs, cut to `max_length`.

    Tokenizers with a separator (BERT family) encode a pair natively ([SEP], token_type_ids);
    decoder tokenizers have none and would glue the two texts, so they get a line break between.
    """
    if pairs is not None and tokenizer.sep_token is None:
        texts, pairs = [f"{text}\n{pair}" for text, pair in zip(texts, pairs)], None
    pairs = None if pairs is None else list(pairs)
    return dict(tokenizer(list(texts), pairs, truncation=True, max_length=max_length))


def encode(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, labels: Sequence[Label], max_length: int
) -> Dataset:
    """Prepared rows as model inputs: token ids, `labels` ids in the model's order, and lengths."""
    ids = {label: i for i, label in enumerate(labels)}
    origins = dataset["origin"]
    unknown = [
        f"{origin}: label {label!r} is not one of the model's labels"
        for label, origin in zip(dataset["label"], origins)
        if label not in ids
    ]
    if unknown:
        raise DataError(
            summarize_problems(unknown, source_name(origins[0])) + f"\nThe model knows the labels "
            f"{list(labels)[:20]}; drop these rows or train a model that has their labels."
        )
    pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
    encoded = tokenize(tokenizer, dataset["text"], pairs, max_length)
    encoded["labels"] = [ids[label] for label in dataset["label"]]
    encoded[LENGTH_COLUMN] = [len(row) for row in encoded["input_ids"]]
    return Dataset.from_dict(encoded)


@dataclass
class PaddedBatches:
    """Pads each batch to its own longest row; drops the length column only the sampler reads."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{key: value for key, value in f.items() if key != LENGTH_COLUMN} for f in features]
        return DataCollatorWithPadding(self.tokenizer)(rows)


@torch.inference_mode()
def logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset | list[dict],
    batch_size: int,
) -> torch.Tensor:
    """Logits for encoded rows, in their order, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = PaddedBatches(tokenizer)
    outputs = []
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        batch = {key: value.to(device) for key, value in batch.items() if key != "labels"}
        outputs.append(model(**batch).logits.float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, model.config.num_labels)


# -- prediction ------------------------------------------------------------------------------
@overload
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    *,
    max_length: int = ...,
    batch_size: int = ...,
    return_scores: Literal[False] = ...,
) -> list[Label]: ...


@overload
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    *,
    max_length: int = ...,
    batch_size: int = ...,
    return_scores: Literal[True],
) -> list[tuple[Label, dict[Label, float]]]: ...


def predict(model, tokenizer, texts, *, max_length=1024, batch_size=16, return_scores=False):
    """The label of each text (str, or a (text, text_pair) tuple); with scores, also every label's probability.

    Texts are cut at `max_length` tokens (the length the model was trained at; data/truncation.py).

    >>> predict(model, tokenizer, ["where is my parcel?"], return_scores=True)
    [('track_order', {'greeting': 0.01, 'track_order': 0.97, ...})]
    """
    if isinstance(texts, str):
        raise UsageError(
            "predict() takes a list of texts: predict([text]) returns a list of one label."
        )
    texts = list(texts)
    if not texts:
        return []
    paired = {isinstance(text, (tuple, list)) and len(text) == 2 for text in texts}
    if len(paired) > 1 or (paired == {False} and not all(isinstance(text, str) for text in texts)):
        raise UsageError(
            "predict() takes a list of strings, or of (text, text_pair) tuples, not a mix."
        )
    firsts = [text[0] for text in texts] if True in paired else texts
    pairs = [text[1] for text in texts] if True in paired else None
    encoded = tokenize(tokenizer, firsts, pairs, text_limit(tokenizer, max_length, model.config))
    rows = [{key: values[i] for key, values in encoded.items()} for i in range(len(texts))]
    order = sorted(
        range(len(rows)), key=lambda i: len(rows[i]["input_ids"])
    )  # less padding per batch
    probabilities = torch.empty(len(rows), model.config.num_labels)
    probabilities[order] = logits(model, tokenizer, [rows[i] for i in order], batch_size).softmax(
        -1
    )
    labels = labels_of(model)
    best = probabilities.argmax(-1).tolist()
    if not return_scores:
        return [labels[i] for i in best]
    return [(labels[i], dict(zip(labels, row))) for i, row in zip(best, probabilities.tolist())]


# -- the task --------------------------------------------------------------------------------
def load_classifier(loading: ModelLoading, labels: Sequence[Label]) -> PreTrainedModel:
    """The checkpoint with a classification head for `labels` (new unless it is a classifier for them).

    With QLoRA the body is 4-bit NF4; the new head stays in full precision and is trained.
    """
    with explain_load_errors(loading.source):
        return AutoModelForSequenceClassification.from_pretrained(
            loading.source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **loading.options(keep_full_precision=HEAD_MODULES),
        )


def checkpoint_labels(source: str, trust_remote_code: bool = False) -> list[Label] | None:
    """The labels of a checkpoint that already is a classifier (a full save, a hub classifier), else None."""
    with explain_load_errors(source):
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


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
        """What a save must remember to rebuild the head without the data: the labels, in id order."""
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
        """Check every row, split off validation rows; the text stays text until it meets the model's labels."""
        parsed = read_rows(records, options)
        rows = parsed.rows
        if not rows:
            raise DataError(f"No usable row in {parsed.source}: every row was rejected.")
        train_rows, val_rows = split_rows(rows, options)
        _check_validation_labels(train_rows, val_rows)
        paired = rows[0].text_pair is not None
        counts = Counter(row.label for row in train_rows)
        report = ClassifyReport.of(
            parsed,
            {"text + text_pair + label" if paired else "text + label": len(rows)},
            labels={str(label): counts[label] for label in sorted(counts)},
        )
        validation = _dataset(val_rows, paired) if val_rows else None
        return finish_prepared(
            _dataset(train_rows, paired),
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
        """A plain Trainer: the model's own cross-entropy loss, batches padded per batch and grouped by length."""
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


def _check_validation_labels(train_rows: list[Row], val_rows: list[Row]) -> None:
    known = {row.label for row in train_rows}
    only_val = [
        f"{row.origin}: label {row.label!r} is only in the validation split"
        for row in val_rows
        if row.label not in known
    ]
    if only_val:
        raise DataError(
            summarize_problems(only_val, source_name(val_rows[0].origin))
            + "\nThe model cannot learn a label it never trains on. Add training rows with these labels, "
            "drop these rows, or change val_size / seed."
        )


def _dataset(rows: list[Row], paired: bool) -> Dataset:
    columns: dict[str, list] = {"text": [row.text for row in rows]}
    if paired:
        columns["text_pair"] = [row.text_pair for row in rows]
    columns["label"] = [row.label for row in rows]
    columns["origin"] = [row.origin for row in rows]
    return Dataset.from_dict(columns)


register_task("classify", ClassifyTask())
