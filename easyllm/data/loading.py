"""Read training rows from files, lists or `datasets.Dataset`, remembering where each came from."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import jsonlines

from ..errors import DataError
from ..registry import Registry

DataSource = Union[str, Path, list, "datasets.Dataset"]  # noqa: F821 - datasets imported lazily


@dataclass(frozen=True)
class Record:
    """One raw row and where it came from (`file.jsonl:12`), so errors can point at it."""

    row: Any
    origin: str


FileReader = Callable[[Path], list[Record]]
FILE_READERS: Registry[FileReader] = Registry("file type")


class _NumberedLines:
    """Yields a file's lines while remembering the number of the last one handed out."""

    def __init__(self, handle: Iterable[bytes]) -> None:
        self.handle = handle
        self.lineno = 0

    def __iter__(self) -> Iterator[bytes]:
        for number, line in enumerate(self.handle, 1):
            self.lineno = number
            yield line


@FILE_READERS.register(".jsonl")
def read_jsonl(path: Path) -> list[Record]:
    records: list[Record] = []
    problems: list[str] = []
    with path.open("rb") as handle:
        lines = _NumberedLines(handle)
        reader = jsonlines.Reader(lines)
        while True:
            try:
                row = reader.read(skip_empty=True)
            except EOFError:
                break
            except jsonlines.InvalidLineError as exc:
                problems.append(f"{path}:{exc.lineno}: not valid JSON ({exc}); fix or delete that line")
                continue
            records.append(Record(row, f"{path}:{lines.lineno}"))
    if problems:
        raise DataError(summarize_problems(problems, path))
    return records


@FILE_READERS.register(".json")
def read_json(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}). A .json file must hold one JSON array "
            "of rows; for one row per line, name the file .jsonl."
        ) from None
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON array of rows, found a {type(data).__name__}. "
            "Wrap the rows in [...], or write one row per line in a .jsonl file."
        )
    return [Record(row, f"{path}[{index}]") for index, row in enumerate(data)]


def read_source(source: DataSource) -> list[Record]:
    """Return the rows of a file path, a list of dicts or a `datasets.Dataset`."""
    if isinstance(source, (str, Path)):
        return read_file(Path(source))
    if isinstance(source, list):
        return [Record(row, f"data[{index}]") for index, row in enumerate(source)]
    if _is_hf_dataset(source):
        return [Record(row, f"dataset row {index}") for index, row in enumerate(source)]
    raise DataError(
        f"Cannot read training data from a {type(source).__name__}. Pass a path to a "
        f"{' / '.join(FILE_READERS.names())} file, a list of dicts, or a datasets.Dataset."
    )


def read_file(path: Path) -> list[Record]:
    if not path.is_file():
        raise DataError(f"Data file not found: {path} (working directory: {Path.cwd()}).")
    suffix = path.suffix.lower()
    if suffix not in FILE_READERS:
        raise DataError(
            f"{path}: unsupported file type '{suffix}'. Supported: {', '.join(FILE_READERS.names())}."
        )
    records = FILE_READERS.get(suffix)(path)
    if not records:
        raise DataError(f"{path}: the file holds no rows.")
    return records


def summarize_problems(problems: list[str], where: object, shown: int = 10) -> str:
    """One message listing the first problems and counting the rest."""
    head = "\n  ".join(problems[:shown])
    rest = len(problems) - shown
    more = f"\n  ... and {rest} more problem(s)" if rest > 0 else ""
    return f"{len(problems)} problem(s) in the data from {where}:\n  {head}{more}"


def _is_hf_dataset(source: object) -> bool:
    return type(source).__module__.startswith("datasets") and hasattr(source, "column_names")
