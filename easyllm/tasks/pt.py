"""Continued pre-training on plain text: documents packed into full blocks, attending within each.

Each document is tokenized as text (a "<|im_end|>" written in it stays text), preceded by the
special tokens the tokenizer puts before any text (Llama's BOS) and followed by the EOS token,
which is ours and so the only real one. Documents are concatenated and cut into rows of exactly
`max_length` tokens (only the very last row is shorter): nothing is padded.

Inside a row, attention stays within each document, by the mechanism of `data/packing.py`:
position ids restart at every document and there is no attention mask, so transformers builds
a block-diagonal causal mask. A document longer than the room left continues in the next row,
where its position ids restart at 0 too: flash-attention kernels find sequence starts by the
smallest position id, models with learned positions would index past their table, and rotary
models (Llama, Qwen, Mistral, SmolLM2) only see position differences, which restarting keeps.
`PretrainTask(cross_document_attention=True)` lets every token see the whole row instead
(positions 0..max_length-1, the classic GPT recipe).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from ..data.control_tokens import CONTROL_TOKEN_POLICIES, control_token_strings
from ..data.encoding import IGNORE_INDEX, ChatEncoder
from ..data.loading import Record
from ..data.prepared import DataOptions, DataReport, PreparedData
from ..data.rows import ParsedRows, RowProblem, parse_rows
from ..data.truncation import Truncation
from ..errors import ConfigError
from ..eval.evaluation import evaluate_loss
from ..train.attention import supports_packed_attention
from ..train.engine import TrainedTokenTrainer
from . import causal
from .base import Capabilities, finish_prepared, register_task, split_rows

TEXT = "text"


@dataclass(frozen=True)
class Document:
    text: str
    origin: str


class PretrainTask:
    """Plain text in ({"text": ...} rows or .txt lines), a model that continues such text out.

    >>> runner = ModelRunner(task="pt")                  # doctest: +SKIP
    >>> runner.load_data("corpus.txt", max_length=512)  # doctest: +SKIP
    >>> runner.train()                                   # doctest: +SKIP
    """

    name = "pt"
    capabilities = Capabilities(chat_template=False, previews=True, truncation=Truncation.BLOCKS)
    load_model = staticmethod(causal.load_model)
    preview_ids = staticmethod(causal.preview_ids)

    def __init__(self, cross_document_attention: bool = False) -> None:
        self.cross_document_attention = cross_document_attention

    def prepare(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        encoder: ChatEncoder | None,
        options: DataOptions,
    ) -> PreparedData:
        parsed = read_documents(records, _text_column(options), tokenizer, options)
        documents = parsed.rows
        report = DataReport.of(
            parsed, {TEXT: len(documents)}, control_token_policy=options.on_control_tokens
        )
        strings = control_token_strings(tokenizer)
        found = ((d.origin, _control_token(d.text, strings)) for d in documents)
        report.control_token_rows = [
            f"{origin}: contains {token!r}" for origin, token in found if token
        ]
        train_docs, val_docs = split_rows(documents, options)
        train = self._encode(train_docs, tokenizer, options, report)
        validation = self._encode(val_docs, tokenizer, options, report) if val_docs else None
        longest = max((len(ids) for ids in train["input_ids"]), default=0)
        return finish_prepared(
            train,
            validation,
            report,
            options,
            parsed.rejects,
            longest_example=longest,
            nothing_left="No text to train on",
        )

    def build_trainer(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        args: TrainingArguments,
        settings: Any,
    ) -> TrainedTokenTrainer:
        """The trained-positions-only loss on whole blocks (full: `settings.packing` is moot)."""
        return TrainedTokenTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.validation,
            data_collator=BlockCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            per_example_attention=supports_packed_attention(model, data.max_length),  # per document
        )

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        batch_size: int,
        max_length: int,
    ) -> dict[str, float]:
        """eval_loss and perplexity over every predicted token of the held-out blocks."""
        return evaluate_loss(model, dataset, BlockCollator(tokenizer.pad_token_id), batch_size)

    def _encode(
        self,
        documents: list[Document],
        tokenizer: PreTrainedTokenizerBase,
        options: DataOptions,
        report: DataReport,
    ) -> Dataset:
        tokens = tokenize_documents(
            [d.text for d in documents], tokenizer, options.on_control_tokens != "allow"
        )
        rows = pack_documents(tokens, options.max_length, self.cross_document_attention)
        report.lengths += [len(t) for t in tokens]
        report.total_tokens += sum(len(t) for t in tokens)
        report.trained_tokens += sum(
            label != IGNORE_INDEX for row in rows["labels"] for label in row[1:]
        )
        return Dataset.from_dict(rows)


def read_documents(
    records: list[Record], column: str, tokenizer: PreTrainedTokenizerBase, options: DataOptions
) -> ParsedRows[Document]:
    """The usable texts and rejected rows; with on_bad_rows="raise", one DataError names each."""
    if options.on_control_tokens not in CONTROL_TOKEN_POLICIES:
        raise ConfigError(
            f"on_control_tokens={options.on_control_tokens!r}: choose one of "
            f"{', '.join(CONTROL_TOKEN_POLICIES)}"
        )
    strings = control_token_strings(tokenizer) if options.on_control_tokens == "reject" else []
    hint = f"Task 'pt' reads one {column!r} string per row (a .txt file gives one per line)."
    return parse_rows(
        records, lambda record: _document(record, column, strings), options.on_bad_rows, hint=hint
    )


def tokenize_documents(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, as_text: bool = True
) -> list[list[int]]:
    """Token ids of each text between the tokenizer's own leading special tokens and EOS.

    `as_text=False` lets special-token strings inside the texts act as special tokens.
    """
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "The tokenizer has no EOS token, which task 'pt' puts after every document. "
            "Set one: runner.tokenizer.eos_token = '<|endoftext|>' (a token of its vocabulary)."
        )
    if not texts:
        return []
    prefix = leading_special_ids(tokenizer)
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]
    return [prefix + ids + [tokenizer.eos_token_id] for ids in encoded]


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens a tokenizer puts before any text (Llama's BOS; none for SmolLM2, Qwen)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
    return [t for t in full[:start] if t != tokenizer.eos_token_id]


def pack_documents(
    documents: list[list[int]], block: int, cross_document: bool = False
) -> dict[str, list[list[int]]]:
    """Concatenate documents and cut rows of `block` tokens; only the last row may be shorter.

    Isolated documents (default): position ids restart at each document and at each row start,
    and a document's first token is not a target (what precedes it is another document).
    `cross_document=True`: positions run 0..block-1 in every row and every token is a target.

    >>> pack_documents([[5, 6, 2], [7, 2]], block=4)["position_ids"]
    [[0, 1, 2, 0], [0]]
    """
    if block < 2:
        raise ConfigError(f"max_length={block}: a block needs at least 2 tokens to predict one")
    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    row: dict[str, list[int]] = {key: [] for key in rows}
    for document in documents:
        start = 0
        while start < len(document):
            piece = document[start : start + block - len(row["input_ids"])]
            first_label = IGNORE_INDEX if start == 0 and not cross_document else piece[0]
            row["input_ids"] += piece
            row["labels"] += [first_label, *piece[1:]]
            row["position_ids"] += list(range(len(piece)))
            start += len(piece)
            if len(row["input_ids"]) == block:
                _close_row(rows, row, cross_document)
    if row["input_ids"]:
        _close_row(rows, row, cross_document)
    return rows


def _close_row(
    rows: dict[str, list[list[int]]], row: dict[str, list[int]], cross_document: bool
) -> None:
    if cross_document:
        row["position_ids"] = list(range(len(row["input_ids"])))
    for key, values in rows.items():
        values.append(row[key])
        row[key] = []


@dataclass
class BlockCollator:
    """Stacks packed blocks as they are; a batch holding the shorter last block pads it.

    The padding continues as one more "document" with restarting position ids and -100 labels
    (as in `PackedCollator`), so no attention mask is needed and real tokens never see it.
    """

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for row in rows:
            padding = longest - len(row["input_ids"])
            batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * padding)
            batch["labels"].append(list(row["labels"]) + [IGNORE_INDEX] * padding)
            batch["position_ids"].append(list(row["position_ids"]) + list(range(padding)))
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def _text_column(options: DataOptions) -> str:
    """The column holding the text: "text", or another via columns={"text": "body"}."""
    columns = dict(options.columns or {})
    if options.input_key or options.output_key or set(columns) - {TEXT}:
        raise ConfigError(
            f"Task 'pt' reads one text column; got input_key={options.input_key!r}, output_key="
            f"{options.output_key!r}, columns={options.columns!r}. "
            "Pass columns={'text': 'your_column'}."
        )
    return columns.get(TEXT, TEXT)


def _document(record: Record, column: str, control_strings: list[str]) -> Document:
    """The row's text as a Document; RowProblem says why the row is unusable."""
    row = record.row
    if record.problem:
        raise RowProblem("unreadable row", record.problem)
    if not isinstance(row, Mapping):
        raise RowProblem(
            "wrong type",
            f"a row must be an object with a {column!r} string, got "
            f"{type(row).__name__}: {str(row)[:60]}",
        )
    text = row.get(column)
    if text is None:
        chatty = {"messages", "conversations", "prompt"} & set(row)
        chat = " (it looks like chat data: use task='sft')" if chatty else ""
        raise RowProblem(
            "missing column", f"missing or null {column!r} (the row has {sorted(row)}){chat}"
        )
    if not isinstance(text, str):
        raise RowProblem(
            "wrong type",
            f"{column!r} must be a string, got {type(text).__name__}: {str(text)[:60]}",
        )
    if not text.strip():
        raise RowProblem("empty text", f"{column!r} is empty; write the text or drop the row")
    found = _control_token(text, control_strings)
    if found:
        raise RowProblem(
            "control token",
            f"contains the control-token string {found!r} "
            "(on_control_tokens='reject'); remove it, or load with on_control_tokens='text' "
            "to keep it as plain text",
        )
    return Document(text, record.origin)


def _control_token(text: str, strings: list[str]) -> str | None:
    return next((token for token in strings if token in text), None)


register_task("pt", PretrainTask())
