"""The one bad-row policy: unusable rows are named by file:line, raised together or skipped.

Every task parses its rows through `parse_rows`: a row that raises `RowProblem` becomes a
`Reject`; with `on_bad_rows="raise"` one DataError lists them all with the fix, with "skip"
the rest trains and the rejects are written to rejects.jsonl in the run folder, and the data
report says how many were skipped and why (`ParsedRows.summary`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args

from ..errors import ConfigError, DataError
from .loading import Record

T = TypeVar("T")
OnBadRows = Literal["raise", "skip"]
BAD_ROW_POLICIES: tuple[str, ...] = get_args(OnBadRows)
FIX_OR_SKIP = (
    "Fix these rows, or pass on_bad_rows='skip' to train on the rest and get the "
    "rejected rows back."
)


class RowProblem(ValueError):
    """Why one row cannot be used; `kind` groups rejects in a summary."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Reject:
    """A row left out: where it came from, why, and the row as read (so it can be fixed)."""

    origin: str
    reason: str
    row: Any
    kind: str = "invalid row"

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "reason": self.reason, "row": self.row}


@dataclass
class ParsedRows(Generic[T]):
    """What `parse_rows` made of the records: usable rows, rejected ones, where they came from."""

    rows: list[T] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # files (or lists, datasets), in reading order

    @property
    def read(self) -> int:
        """How many records were read."""
        return len(self.rows) + len(self.rejects)

    @property
    def source(self) -> str:
        """The data's name for reports: its only source, or the first of several."""
        return self.sources[0] if self.sources else "data"

    def where(self) -> str:
        """E.g. "a.jsonl" or "3 files (a.jsonl, b.jsonl, c.jsonl)"."""
        if len(self.sources) <= 1:
            return self.source
        more = ", ..." if len(self.sources) > 3 else ""
        return f"{len(self.sources)} files ({', '.join(self.sources[:3])}{more})"

    def summary(self) -> str:
        """E.g. "skipped 3 of 100 rows: 2 roles out of order, 1 unreadable row" ("" if none)."""
        if not self.rejects:
            return ""
        kinds = Counter(reject.kind for reject in self.rejects)
        reasons = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        return f"skipped {len(self.rejects)} of {self.read} rows: {reasons}"


def check_bad_row_policy(on_bad_rows: str) -> None:
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise ConfigError(f"on_bad_rows={on_bad_rows!r}: choose 'raise' or 'skip'")


def parse_rows(
    records: Iterable[Record],
    parse: Callable[[Record], T],
    on_bad_rows: OnBadRows = "raise",
    *,
    hint: str = "",
) -> ParsedRows[T]:
    """Parse every record; a RowProblem (or a custom parser's ValueError) makes it a Reject.

    With on_bad_rows="raise", one DataError names every bad row by file:line, then `hint` (what
    the task reads) and the fix.
    """
    check_bad_row_policy(on_bad_rows)
    parsed: ParsedRows[T] = ParsedRows()
    seen: set[str] = set()
    for record in records:
        name = source_name(record.origin)
        if name not in seen:
            seen.add(name)
            parsed.sources.append(name)
        try:
            parsed.rows.append(parse(record))
        except RowProblem as exc:
            parsed.rejects.append(Reject(record.origin, str(exc), record.row, exc.kind))
        except ValueError as exc:  # a custom format's own check
            parsed.rejects.append(Reject(record.origin, str(exc), record.row))
    if parsed.rejects and on_bad_rows == "raise":
        raise_bad_rows(parsed.rejects, parsed.where(), hint)
    return parsed


def raise_bad_rows(rejects: list[Reject], where: str, hint: str = "") -> None:
    """One DataError naming every rejected row, what the task reads (`hint`) and the fix."""
    problems = [f"{reject.origin}: {reject.reason}" for reject in rejects]
    raise DataError(
        summarize_problems(problems, where) + "\n" + (f"{hint} " if hint else "") + FIX_OR_SKIP
    )


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> Path:
    """Write one JSON object per reject ({"origin", "reason", "row"}), to fix and load again."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(json.dumps(reject.to_json(), ensure_ascii=False, default=str) + "\n")
    return path


def summarize_problems(problems: list[str], where: object, shown: int = 10) -> str:
    """One message listing the first problems and counting the rest."""
    head = "\n  ".join(problems[:shown])
    rest = len(problems) - shown
    more = f"\n  ... and {rest} more problem(s)" if rest > 0 else ""
    return f"{len(problems)} problem(s) in the data from {where}:\n  {head}{more}"


def source_name(origin: str) -> str:
    """The file, list or dataset an origin names: `a.jsonl` from `a.jsonl:3`, `x` from `x[2]`."""
    head = origin.split("[", 1)[0]
    name, _, line = head.rpartition(":")
    return name if name and line.isdigit() else head
