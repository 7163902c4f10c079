"""The prompts a teacher answers: a list of strings, or rows read by load_data's own loaders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.loading import Record, iter_records
from ..data.rows import summarize_problems
from ..errors import DataError

PROMPT_COLUMNS = ("prompt", "instruction", "input", "question", "text")
Inputs = list[str] | list[dict] | str | Path


@dataclass(frozen=True)
class Job:
    """One answer to ask for: a prompt (sample `sample` of n), keyed so a resumed run skips it."""

    prompt: str
    origin: str
    sample: int
    key: str


def job_key(system: str | None, prompt: str, sample: int) -> str:
    """A stable id of (system, prompt, sample): what makes an answer "already written" on resume."""
    text = json.dumps([system, prompt, sample], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def read_prompts(inputs: Inputs, column: str | None = None) -> list[tuple[str, str]]:
    """(prompt, origin) for every input; one DataError naming each bad row's file:line.

    A row of a file (or a dict in a list) gives its `column`, or else the first of
    prompt / instruction / input / question / text it has; alpaca rows get their input appended
    to the instruction, as load_data does. A .txt file is one prompt per line.

    >>> read_prompts(["What is 2+2?"])
    [('What is 2+2?', 'data[0]')]
    """
    prompts, problems = [], []
    for record in iter_records(inputs):
        try:
            prompts.append((_prompt(record, column), record.origin))
        except ValueError as exc:
            problems.append(f"{record.origin}: {exc}")
    if problems:
        where = inputs if isinstance(inputs, (str, Path)) else "the list of inputs"
        raise DataError(summarize_problems(problems, where) + "\nFix these rows or drop them.")
    return prompts


def _prompt(record: Record, column: str | None) -> str:
    if record.problem:
        raise ValueError(record.problem)
    row: Any = record.row
    if isinstance(row, str):
        text = row
    elif isinstance(row, Mapping):
        text = _from_row(row, column)
    else:
        raise ValueError(
            f"expected a string or a row with a prompt column, got {type(row).__name__}: "
            f"{str(row)[:60]}"
        )
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the prompt must be non-empty text, got {text!r:.60}")
    return text


def _from_row(row: Mapping[str, Any], column: str | None) -> Any:
    if column is not None:
        if column not in row:
            raise ValueError(f"no column '{column}' (the row has {sorted(row)})")
        return row[column]
    found = next((name for name in PROMPT_COLUMNS if row.get(name) is not None), None)
    if found is None:
        raise ValueError(
            f"no prompt column in {sorted(row)}: name one of {', '.join(PROMPT_COLUMNS)} "
            "or pass column='your_column'"
        )
    if found == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
        return f"{row['instruction']}\n\n{row['input']}"
    return row[found]


def make_jobs(prompts: list[tuple[str, str]], system: str | None, n: int) -> tuple[list[Job], int]:
    """One job per (prompt, sample); a prompt given twice is asked once. Returns (jobs, repeats)."""
    jobs: dict[str, Job] = {}
    for prompt, origin in prompts:
        for sample in range(n):
            key = job_key(system, prompt, sample)
            jobs.setdefault(key, Job(prompt, origin, sample, key))
    return list(jobs.values()), len(prompts) * n - len(jobs)
