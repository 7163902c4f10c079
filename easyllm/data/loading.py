"""Read training rows from files, folders, lists or `datasets` objects, remembering their origin.

Every row becomes a `Record` whose origin a person can act on:
`file.jsonl:LINE`, `file.txt:LINE`, `file.csv:LINE` (the header is line 1, so the first row is
line 2; a row with a quoted line break is named by its first line), `file.json[i]` or
`file.json["key"][i]`, `file.parquet[row i]` (0-based, as pandas' `iloc`), `data[i]` for a list,
`dataset[i]` for a `datasets.Dataset` and `dataset["train"][i]` for a `DatasetDict`.

Readers are generators, so `iter_records` streams a file row by row; only `.json` is parsed whole.
A line that cannot be parsed becomes a Record with `problem` set instead of stopping the read,
so the bad-row policy (raise or skip) applies to it like to any other bad row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import jsonlines

from ..errors import DataError
from ..registry import Registry

DataSource = Union[str, Path, list, "datasets.Dataset", "datasets.DatasetDict"]  # noqa: F821
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class Record:
    """One raw row and where it came from (`file.jsonl:12`), so errors can point at it.

    `problem` is set (and `row` holds the raw text) when the reader could not parse the row.
    """

    row: Any
    origin: str
    problem: str | None = None


FileReader = Callable[[Path], Iterable[Record]]
FILE_READERS: Registry[FileReader] = Registry("file type")


class _NumberedLines:
    """Yields a file's lines, remembering the number of the last one handed out."""

    def __init__(self, handle: Iterable[bytes]) -> None:
        self.handle = handle
        self.lineno = 0

    def __iter__(self) -> Iterator[bytes]:
        for number, line in enumerate(self.handle, 1):
            self.lineno = number
            yield line


@FILE_READERS.register(".jsonl")
def read_jsonl(path: Path) -> Iterator[Record]:
    """One JSON value per line, read with jsonlines; blank lines are ignored, bad ones reported."""
    with path.open("rb") as handle:
        lines = _NumberedLines(handle)
        reader = jsonlines.Reader(lines)
        while True:
            try:
                row = reader.read(skip_empty=True)
            except EOFError:
                return
            except jsonlines.InvalidLineError as exc:
                yield Record(_as_text(exc.line), f"{path}:{exc.lineno}", _line_problem(exc))
                continue
            yield Record(row, f"{path}:{lines.lineno}")


def _as_text(line: str | bytes) -> str:
    return line.decode("utf-8", "replace") if isinstance(line, bytes) else line


def _line_problem(exc: jsonlines.InvalidLineError) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text ({cause.reason}); save the file as UTF-8"
    if isinstance(cause, json.JSONDecodeError):
        hint = (
            " (the file looks like one JSON array: name it .json)"
            if _as_text(exc.line).strip() == "["
            else ""
        )
        return f"not valid JSON ({cause.msg} at column {cause.colno}){hint}; fix or delete it"
    return f"not usable JSON ({str(exc).split(' (line')[0]}); fix or delete it"


@FILE_READERS.register(".json")
def read_json(path: Path) -> Iterator[Record]:
    """An array of rows, an object of rows, or an object with one list of rows ({"data": [...]}).

    The whole file is parsed at once; for large data prefer .jsonl or .parquet, which stream.
    """
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise DataError(
            f"{where}: not valid JSON ({exc}). A .json file must hold one JSON array of rows; "
            "for one row per line, name the file .jsonl."
        ) from None
    for suffix, row in _json_rows(data, path):
        yield Record(row, f"{path}{suffix}")


def _json_rows(data: Any, path: Path) -> Iterator[tuple[str, Any]]:
    if isinstance(data, list):
        return ((f"[{index}]", row) for index, row in enumerate(data))
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) == 1:
            key = json.dumps(lists[0], ensure_ascii=False)
            return ((f"[{key}][{index}]", row) for index, row in enumerate(data[lists[0]]))
        if data and all(isinstance(value, dict) for value in data.values()):
            return ((f"[{json.dumps(k, ensure_ascii=False)}]", row) for k, row in data.items())
    found = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else None
    found = found or f"a {type(data).__name__}"
    raise DataError(
        f"{path}: expected a JSON array of rows, an object of rows, or an object with one list of "
        f'rows like {{"data": [...]}}; found {found}. Wrap the rows in [...], or write one row '
        "per line in a .jsonl file."
    )


@FILE_READERS.register(".csv")
def read_csv(path: Path) -> Iterator[Record]:
    """A header line naming the columns, then one row per record; every value is text."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long replies exceed 128 KiB
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, [])
            end = reader.line_num
            for fields in reader:
                start, end = end + 1, reader.line_num
                if not fields:  # a blank line
                    continue
                if len(fields) != len(header):
                    problem = (
                        f"has {len(fields)} fields but the header has {len(header)} "
                        f"({', '.join(header)}); quote values that contain commas"
                    )
                    yield Record(fields, f"{path}:{start}", problem)
                    continue
                yield Record(dict(zip(header, fields)), f"{path}:{start}")
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path}:{reader.line_num + 1}: cannot read CSV ({exc}); save the "
                "file as UTF-8 CSV with a header line."
            ) from None


@FILE_READERS.register(".parquet")
def read_parquet(path: Path) -> Iterator[Record]:
    """Rows in batches, so a large file is never held as Python objects all at once."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise ImportError("Reading .parquet files needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({exc}).") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield Record(row, f"{path}[row {index}]")
            index += 1


@FILE_READERS.register(".txt")
def read_txt(path: Path) -> Iterator[Record]:
    """Plain text for pre-training: one row {"text": line} per non-empty line."""
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if line.strip():
                    yield Record({"text": line.rstrip("\r\n")}, f"{path}:{lineno}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8.") from None


def iter_records(source: DataSource) -> Iterator[Record]:
    """Stream the rows of a file, a folder, a list, a Dataset, or a DatasetDict's "train" split.

    A missing file or unsupported type fails at once; rows are read only as they are consumed.

    >>> first = next(iter_records("data/train.jsonl"))  # reads only the first line
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _non_empty(_read_files(folder_files(path)[0]), path)
        return _non_empty(_file_reader(path)(path), path)
    if isinstance(source, list):
        return (Record(row, f"data[{index}]") for index, row in enumerate(source))
    dataset, prefix = _dataset_split(source)
    return (Record(row, f"{prefix}[{index}]") for index, row in enumerate(dataset))


def read_source(source: DataSource) -> list[Record]:
    """Every row of `source` as a list; `iter_records` streams instead."""
    return list(iter_records(source))


def is_collection(source: DataSource) -> bool:
    """Whether `source` is several things to read (a folder, a DatasetDict) rather than one."""
    if isinstance(source, (str, Path)):
        return Path(source).is_dir()
    return type(source).__name__ in ("DatasetDict", "IterableDatasetDict")


def describe_source(source: DataSource) -> str:
    """Say what `iter_records(source)` reads, e.g. which files of a folder or which split."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_dir():
            return str(path)
        used, ignored = folder_files(path)
        names = ", ".join(f.name for f in used)
        skipped = f"; ignored {', '.join(f.name for f in ignored)} (unsupported)" if ignored else ""
        return f"{path}/ ({len(used)} file(s): {names}{skipped})"
    if isinstance(source, list):
        return f"a list of {len(source)} rows"
    dataset, prefix = _dataset_split(source)
    if prefix == "dataset":
        return f"a datasets.Dataset of {_size(dataset)}"
    others = ", ".join(f"{name} ({_size(rows)})" for name, rows in other_splits(source).items())
    return (
        f"the '{TRAIN_SPLIT}' split of a DatasetDict ({_size(dataset)}; "
        f"not read: {others or 'no other split'})"
    )


def other_splits(source: DataSource) -> dict[str, Any]:
    """A DatasetDict's splits besides "train" (e.g. "validation", "test"); {} for other sources."""
    if type(source).__name__ not in ("DatasetDict", "IterableDatasetDict"):
        return {}
    return {name: split for name, split in source.items() if name != TRAIN_SPLIT}


def folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files directly inside `folder` that can be read (sorted by name), and those ignored."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    used = [p for p in files if p.suffix.lower() in FILE_READERS]
    if not used:
        raise DataError(
            f"{folder}: no {' / '.join(FILE_READERS.names())} file in this folder "
            f"(found: {', '.join(p.name for p in files) or 'nothing'})."
        )
    return used, [p for p in files if p not in used]


# -- internals -----------------------------------------------------------------------------------
def _file_reader(path: Path) -> FileReader:
    if not path.exists():
        raise DataError(
            f"Data file not found: {path} (working directory: {Path.cwd()}). For a dataset on "
            "the Hugging Face Hub, pass datasets.load_dataset(name) instead of its name."
        )
    suffix = path.suffix.lower()
    if suffix not in FILE_READERS:
        supported = ", ".join(FILE_READERS.names())
        raise DataError(f"{path}: unsupported file type '{suffix}'. Supported: {supported}.")
    return FILE_READERS.get(suffix)


def _read_files(files: list[Path]) -> Iterator[Record]:
    for path in files:
        yield from FILE_READERS.get(path.suffix.lower())(path)


def _non_empty(records: Iterable[Record], where: Path) -> Iterator[Record]:
    count = 0
    for record in records:
        count += 1
        yield record
    if not count:
        raise DataError(f"{where}: holds no rows.")


def _size(dataset: Any) -> str:
    return f"{len(dataset)} rows" if hasattr(dataset, "__len__") else "streamed rows"


def _dataset_split(source: object) -> tuple[Any, str]:
    """The rows a `datasets` object stands for, and the origin prefix that names them."""
    kind = type(source).__name__ if type(source).__module__.startswith("datasets") else ""
    if kind in ("Dataset", "IterableDataset"):
        return source, "dataset"
    if kind in ("DatasetDict", "IterableDatasetDict"):
        if TRAIN_SPLIT not in source:
            raise DataError(
                f"The DatasetDict has splits {list(source)} but no '{TRAIN_SPLIT}'; pass the one "
                f"to train on, e.g. dataset_dict['{next(iter(source), 'name')}']."
            )
        return source[TRAIN_SPLIT], f'dataset["{TRAIN_SPLIT}"]'
    raise DataError(
        f"Cannot read training data from a {type(source).__name__}. Pass a path to a "
        f"{' / '.join(FILE_READERS.names())} file or a folder of them, a list of dicts, "
        "a datasets.Dataset or a DatasetDict."
    )
