"""Classify rows: {"text", ["text_pair"], "label"} read, checked, and kept as text.

Every row is read through `data/rows.parse_rows`; then the rows must also agree with each other
(all or none have a text_pair, one label type), and every validation label must be trained on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from ..data.loading import Record
from ..data.prepared import DataOptions
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
from ..errors import ConfigError, DataError

Label = str | int
FIELDS = ("text", "text_pair", "label")
KINDS = {str: "string", int: "integer"}


@dataclass(frozen=True)
class Row:
    text: str
    text_pair: str | None
    label: Label
    origin: str


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
    """Valid rows and rejected ones; all rows must agree on a text_pair and on the label type.

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


def check_validation_labels(train_rows: list[Row], val_rows: list[Row]) -> None:
    """Refuse validation rows whose label no training row has: the model could never learn it."""
    known = {row.label for row in train_rows}
    only_val = [
        f"{row.origin}: label {row.label!r} is only in the validation split"
        for row in val_rows
        if row.label not in known
    ]
    if only_val:
        raise DataError(
            summarize_problems(only_val, source_name(val_rows[0].origin))
            + "\nThe model cannot learn a label it never trains on. Add training rows with these "
            "labels, drop these rows, or change val_size / seed."
        )


def rows_dataset(rows: list[Row], paired: bool) -> Dataset:
    """The rows as columns text, [text_pair], label and origin: still text, not token ids."""
    columns: dict[str, list] = {"text": [row.text for row in rows]}
    if paired:
        columns["text_pair"] = [row.text_pair for row in rows]
    columns["label"] = [row.label for row in rows]
    columns["origin"] = [row.origin for row in rows]
    return Dataset.from_dict(columns)
