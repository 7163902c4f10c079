"""Which teacher answers are kept: each check is one named rule, applied in order.

A dropped answer is not lost: it goes to the rejects file with the rule's name as its reason,
so the summary's counts are the rejects file's counts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..eval.generation import Reply

Keep = Callable[[str, str], bool]  # (prompt, answer) -> keep it?
_SPACE = re.compile(r"\s+")


@dataclass
class AnswerFilter:
    """The rules an answer must pass: not truncated, not empty, within the length bounds, accepted
    by `keep(prompt, answer)`, and not a duplicate of an answer already kept (whitespace and
    case ignored). `reason()` names the first rule an answer fails, or None to keep it.
    """

    min_chars: int | None = None
    max_chars: int | None = None
    keep: Keep | None = None
    _seen: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        problems = [
            f"{name}={value} must be a positive number of characters"
            for name, value in (("min_chars", self.min_chars), ("max_chars", self.max_chars))
            if value is not None and value < 1
        ]
        if self.min_chars and self.max_chars and self.min_chars > self.max_chars:
            problems.append(f"min_chars={self.min_chars} is more than max_chars={self.max_chars}")
        if problems:
            raise ConfigError("; ".join(problems))
        self._rules: list[tuple[str, Callable[[str, Reply], bool]]] = [
            ("truncated", lambda prompt, reply: reply.finish_reason == "length"),
            ("content_filter", lambda prompt, reply: reply.finish_reason == "content_filter"),
            ("empty", lambda prompt, reply: not reply.text.strip()),
            (
                "too_short",
                lambda prompt, reply: (
                    self.min_chars is not None and len(reply.text) < self.min_chars
                ),
            ),
            (
                "too_long",
                lambda prompt, reply: (
                    self.max_chars is not None and len(reply.text) > self.max_chars
                ),
            ),
            (
                "rejected_by_keep",
                lambda prompt, reply: self.keep is not None and not self.keep(prompt, reply.text),
            ),
            ("duplicate", lambda prompt, reply: _fingerprint(reply.text) in self._seen),
        ]

    @property
    def reasons(self) -> list[str]:
        return [name for name, _ in self._rules]

    def remember(self, answers: Iterable[str]) -> None:
        """Count answers an earlier run kept as seen, so that their duplicates are dropped too."""
        self._seen.update(_fingerprint(answer) for answer in answers)

    def reason(self, prompt: str, reply: Reply) -> str | None:
        """The first rule `reply` fails, or None; the duplicate rule remembers a kept answer."""
        failed = next((name for name, fails in self._rules if fails(prompt, reply)), None)
        if failed is None:
            self._seen.add(_fingerprint(reply.text))
        return failed


def _fingerprint(answer: str) -> str:
    normalized = _SPACE.sub(" ", answer).strip().casefold()
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()
