"""The output file and its rejects file, appended one row at a time so a killed run can resume.

Every row carries the `key` of the job it answers (see inputs.job_key); the keys already in
either file are the jobs a resumed run skips. Each row is flushed and fsynced as it is written,
so a kill can tear at most the last line, which is repaired on the next run (and re-asked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11


def sibling(output: Path, suffix: str) -> Path:
    """`answers.jsonl` -> `answers.rejects.jsonl`, `answers.summary.json`."""
    return output.with_name(output.name.removesuffix(".jsonl") + suffix)


class AnswerLog:
    """What earlier runs wrote (keys answered, answers kept, teachers) and the files to append to.

    >>> with AnswerLog(Path("answers.jsonl")) as log:
    ...     log.write({"messages": [...], "teacher": "t", "key": "ab12"}, kept=True)
    """

    def __init__(self, output: Path) -> None:
        if output.suffix != ".jsonl":
            raise ConfigError(
                f"output={str(output)!r}: the answers are written as JSON lines; "
                "name the file *.jsonl"
            )
        self.output = output
        self.rejects = sibling(output, ".rejects.jsonl")
        self.answered: set[str] = set()
        self.kept_answers: list[str] = []
        self.teachers: set[str] = set()
        self._files: dict[bool, IO[str]] = {}
        for path, kept in ((self.output, True), (self.rejects, False)):
            for row in _read_rows(path):
                self._remember(row, kept)

    def __enter__(self) -> Self:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._files = {
            kept: path.open("a", encoding="utf-8")
            for kept, path in ((True, self.output), (False, self.rejects))
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._files.values():
            handle.close()
        if self.rejects.exists() and self.rejects.stat().st_size == 0:
            self.rejects.unlink()  # nothing was dropped: no empty file to wonder about

    def write(self, row: dict[str, Any], *, kept: bool) -> None:
        """Append one row and make it durable before the next answer is asked for."""
        handle = self._files[kept]
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self._remember(row, kept)

    def _remember(self, row: dict[str, Any], kept: bool) -> None:
        if row.get("key"):
            self.answered.add(row["key"])
        if row.get("teacher"):
            self.teachers.add(row["teacher"])
        messages = row.get("messages")
        if kept and isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            self.kept_answers.append(str(messages[-1].get("content", "")))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of `path` (none if it does not exist), after repairing a torn last line."""
    if not path.exists():
        return []
    _repair_torn_end(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({exc.msg}); fix or delete this line, "
                    "then run again to resume"
                ) from None
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _repair_torn_end(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: finish it or cut it off."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        with path.open("r+b") as handle:
            handle.truncate(start)
        print(
            f"easyllm: removed an incomplete last line from {path} (an earlier run was stopped "
            "while writing it); that input will be asked again"
        )
        return
    with path.open("ab") as handle:
        handle.write(b"\n")
