"""The sequence classifier: loaded with its labels, fed token ids, asked for labels.

`encode` tokenizes training, evaluation and prediction text the same way (`tokenize`); the
labels live in the model config (id2label), so rows are always mapped with the model's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..data.rows import source_name, summarize_problems
from ..data.truncation import text_limit
from ..errors import DataError, UsageError
from ..methods import HEAD_MODULES
from ..modeling import explain_load_errors
from .base import ModelLoading
from .classify_rows import Label

Text = str | tuple[str, str]  # one text, or a (text, text_pair) pair
# TrainingArguments.length_column_name: the length-grouped sampler reads it
LENGTH_COLUMN = "length"


# -- the model -------------------------------------------------------------------------------
def load_classifier(loading: ModelLoading, labels: Sequence[Label]) -> PreTrainedModel:
    """The checkpoint with a classification head for `labels` (new unless it already has them).

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
    """The labels of a checkpoint that is a classifier (a full save, a hub model), else None."""
    with explain_load_errors(source):
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        return None
    return _config_labels(config)


def labels_of(model: PreTrainedModel) -> list[Label]:
    """The model's labels in id order (works through a PeftModel too)."""
    return _config_labels(model.config)


def _config_labels(config: PretrainedConfig) -> list[Label]:
    return [config.id2label[i] for i in range(config.num_labels)]


# -- encoding --------------------------------------------------------------------------------
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
    """The label of each text (a str or a (text, text_pair) tuple); with scores, all probabilities.

    Texts are cut at `max_length` tokens (the length the model was trained at; data/truncation.py).

    >>> predict(model, tokenizer, ["where is my parcel?"], return_scores=True)
    [('track_order', {'greeting': 0.01, 'track_order': 0.97, ...})]
    """
    firsts, pairs = _split_pairs(texts)
    if not firsts:
        return []
    encoded = tokenize(tokenizer, firsts, pairs, text_limit(tokenizer, max_length, model.config))
    rows = [{key: values[i] for key, values in encoded.items()} for i in range(len(firsts))]
    # shortest first: less padding per batch
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    scores = logits(model, tokenizer, [rows[i] for i in order], batch_size)
    probabilities = torch.empty(len(rows), model.config.num_labels)
    probabilities[order] = scores.softmax(-1)
    labels = labels_of(model)
    best = probabilities.argmax(-1).tolist()
    if not return_scores:
        return [labels[i] for i in best]
    return [(labels[i], dict(zip(labels, row))) for i, row in zip(best, probabilities.tolist())]


def _split_pairs(texts: Sequence[Text]) -> tuple[list[str], list[str] | None]:
    """`predict`'s texts as (first texts, second texts or None); a str or a mix is refused."""
    if isinstance(texts, str):
        raise UsageError(
            "predict() takes a list of texts: predict([text]) returns a list of one label."
        )
    texts = list(texts)
    paired = {isinstance(text, (tuple, list)) and len(text) == 2 for text in texts}
    if len(paired) > 1 or (paired == {False} and not all(isinstance(text, str) for text in texts)):
        raise UsageError(
            "predict() takes a list of strings, or of (text, text_pair) tuples, not a mix."
        )
    if True in paired:
        return [text[0] for text in texts], [text[1] for text in texts]
    return texts, None
