"""Training data from a stronger model: a teacher answers your prompts, the good answers are kept.

>>> teacher = ModelRunner("big-model")
>>> path = easyllm.synthesize("prompts.jsonl", teacher=teacher, output="answers.jsonl")
>>> student.load_data(path); student.train()

Modules: inputs (prompts and their keys), teachers (local or endpoint), filters (what is kept),
store (the files, appended row by row so a stopped run resumes).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..eval.generation import SAMPLING_KEYS, Reply
from .filters import AnswerFilter, Keep
from .inputs import Inputs, Job, make_jobs, read_prompts
from .store import AnswerLog, sibling
from .teachers import Endpoint, LocalTeacher, Teacher, TeacherError, as_teacher

if TYPE_CHECKING:
    from ..runner import ModelRunner

__all__ = ["Endpoint", "LocalTeacher", "SynthesisSummary", "Teacher", "TeacherError", "synthesize"]


@dataclass
class SynthesisSummary:
    """What one synthesize() run did; also written as JSON beside the output (`*.summary.json`).

    `dropped` counts this run's rejects by reason, exactly as the rejects file holds them;
    `skipped` counts inputs answered by an earlier run, `repeated` inputs given more than once.
    """

    teacher: str
    output: str
    rejects: str
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    repeated: int = 0
    total_kept: int = 0  # rows in the output file after this run, earlier runs' included
    finished: bool = False

    def count(self, reason: str | None) -> None:
        if reason is None:
            self.kept += 1
        else:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def __str__(self) -> str:
        answered = self.kept + sum(self.dropped.values())
        dropped = ", ".join(
            f"{count} {reason}" for reason, count in Counter(self.dropped).most_common()
        )
        parts = [
            f"kept {self.kept} of {answered} answers from {self.teacher}"
            + (f" (dropped {dropped}; see {self.rejects})" if dropped else "")
        ]
        if self.skipped:
            parts.append(f"skipped {self.skipped} inputs answered by an earlier run")
        if self.repeated:
            parts.append(f"asked {self.repeated} repeated inputs once")
        parts.append(f"{self.total_kept} rows in {self.output}")
        status = "" if self.finished else " [stopped early: run again to resume]"
        return "synthesize: " + "; ".join(parts) + status


def synthesize(
    inputs: Inputs,
    teacher: ModelRunner | Teacher,
    *,
    output: str | os.PathLike = "synthesized.jsonl",
    system: str | None = None,
    n: int = 1,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    column: str | None = None,
    min_chars: int | None = None,
    max_chars: int | None = None,
    keep: Keep | None = None,
    progress: bool = True,
    **sampling: Any,
) -> Path:
    """Write `teacher`'s kept answers to every input as training rows; returns `output`.

    `inputs`: a list of prompts, or a .jsonl/.csv/.json/.parquet/.txt file whose rows have a
    prompt / instruction / input / question / text column (or `column=`). `teacher`: a
    ModelRunner (generating `batch_size` prompts at a time) or an `Endpoint`. `n` answers per
    prompt need sampling (e.g. `temperature=0.8`); sampling options go to the teacher.

    Each kept answer is appended at once as {"messages": [system?, user, assistant], "teacher",
    "key"}, the shape load_data reads. Empty, truncated (hit `max_new_tokens`), too short or
    long (`min_chars`, `max_chars`), refused by `keep(prompt, answer)` and duplicate answers go
    to `<output>.rejects.jsonl` with the reason. Run it again with the same output after a
    stop or a crash: answered inputs (kept or dropped) are skipped. The summary is printed and
    written to `<output>.summary.json`.

    >>> prompts = ["Explain TCP in two sentences."]
    >>> path = synthesize(prompts, teacher=ModelRunner(), output="tcp.jsonl")
    >>> ModelRunner(small_model).load_data(path)
    """
    _check_answer_count(n, sampling)
    rules = AnswerFilter(min_chars=min_chars, max_chars=max_chars, keep=keep)
    jobs, repeated = make_jobs(read_prompts(inputs, column), system, n)
    source = as_teacher(teacher, batch_size)
    log = AnswerLog(Path(output))
    _check_one_teacher(log, source.name)
    rules.remember(log.kept_answers)
    pending = [job for job in jobs if job.key not in log.answered]
    skipped = len(jobs) - len(pending)
    summary = SynthesisSummary(
        source.name, str(log.output), str(log.rejects), skipped=skipped, repeated=repeated
    )
    with _summarized(summary, log):
        _ask_all(
            source,
            pending,
            log,
            rules,
            summary,
            system=system,
            max_new_tokens=max_new_tokens,
            progress=progress,
            sampling=sampling,
        )
    return log.output


def _check_answer_count(n: int, sampling: dict[str, Any]) -> None:
    """At least one answer per input, and several only when sampling makes them differ."""
    if n < 1:
        raise ConfigError(f"n={n}: ask for at least one answer per input")
    if n > 1 and not any(key in sampling for key in SAMPLING_KEYS):
        raise ConfigError(
            f"n={n} answers per input need sampling, or they are all the same: pass "
            "e.g. temperature=0.8"
        )


def _check_one_teacher(log: AnswerLog, teacher: str) -> None:
    """One output holds one teacher's answers: resuming with another one is refused."""
    others = log.teachers - {teacher}
    if others:
        raise ConfigError(
            f"{log.output} holds answers from {sorted(others)}, not from {teacher!r}. "
            "Write to another output=..., or delete the file to start over."
        )


@contextmanager
def _summarized(summary: SynthesisSummary, log: AnswerLog) -> Iterator[None]:
    """Write `<output>.summary.json` and print the summary, however the block ends.

    The run is `finished` only when the block ran to its end.
    """
    try:
        yield
        summary.finished = True
    finally:
        summary.total_kept = len(log.kept_answers)
        summary_file = sibling(log.output, ".summary.json")
        summary_file.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        print(summary)


def _ask_all(
    teacher: Teacher,
    jobs: list[Job],
    log: AnswerLog,
    rules: AnswerFilter,
    summary: SynthesisSummary,
    *,
    system: str | None,
    max_new_tokens: int,
    progress: bool,
    sampling: dict[str, Any],
) -> None:
    """Ask the teacher for every job and write each answer, kept or rejected, as it arrives."""
    from tqdm.auto import tqdm

    with (
        log,
        tqdm(
            total=len(jobs),
            desc=f"synthesize ({teacher.name})",
            unit="answer",
            disable=not progress or not jobs,
        ) as bar,
    ):
        answers = teacher.answer(
            [job.prompt for job in jobs], system=system, max_new_tokens=max_new_tokens, **sampling
        )
        for index, reply in answers:
            job = jobs[index]
            reason = rules.reason(job.prompt, reply)
            log.write(
                _kept_row(job, reply, system, teacher.name)
                if reason is None
                else _rejected_row(job, reply, system, teacher.name, reason),
                kept=reason is None,
            )
            summary.count(reason)
            bar.update(1)


def _kept_row(job: Job, reply: Reply, system: str | None, teacher: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [
        {"role": "user", "content": job.prompt},
        {"role": "assistant", "content": reply.text},
    ]
    return {"messages": messages, "teacher": teacher, "key": job.key}


def _rejected_row(
    job: Job, reply: Reply, system: str | None, teacher: str, reason: str
) -> dict[str, Any]:
    return {
        "reason": reason,
        "prompt": job.prompt,
        "system": system,
        "answer": reply.text,
        "finish_reason": reply.finish_reason,
        "origin": job.origin,
        "teacher": teacher,
        "key": job.key,
    }
