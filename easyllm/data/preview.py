"""Show encoded examples with the trained spans marked: colour in a terminal, HTML in Jupyter."""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from itertools import groupby

from transformers import PreTrainedTokenizerBase

from .encoding import IGNORE_INDEX

_TRAINED_ANSI = "\033[1;32m", "\033[0m"  # bold green
_TRAINED_PLAIN = "[[", "]]"


@dataclass
class Span:
    text: str
    trained: bool


def spans(
    tokenizer: PreTrainedTokenizerBase, input_ids: list[int], labels: list[int]
) -> list[Span]:
    """Consecutive tokens grouped by whether they are trained, decoded back to text."""
    flags = [label != IGNORE_INDEX for label in labels]
    result, position = [], 0
    for trained, group in groupby(flags):
        count = len(list(group))
        result.append(Span(tokenizer.decode(input_ids[position : position + count]), trained))
        position += count
    return result


@dataclass
class Preview:
    """Rendered examples; trained text is green in a terminal, [[bracketed]] in plain text."""

    examples: list[list[Span]]

    def text(self, colour: bool = False) -> str:
        start, end = _TRAINED_ANSI if colour else _TRAINED_PLAIN
        blocks = []
        for number, example in enumerate(self.examples, 1):
            body = "".join(f"{start}{s.text}{end}" if s.trained else s.text for s in example)
            blocks.append(f"--- example {number} ---\n{body}")
        return "\n".join(blocks)

    def __str__(self) -> str:
        return self.text(colour=sys.stdout.isatty())

    def _repr_html_(self) -> str:
        parts = []
        for number, example in enumerate(self.examples, 1):
            body = "".join(
                f'<mark style="background:#c8f7c5">{html.escape(s.text)}</mark>'
                if s.trained
                else html.escape(s.text)
                for s in example
            )
            parts.append(
                f"<p><b>example {number}</b></p><pre style='white-space:pre-wrap'>{body}</pre>"
            )
        legend = "<p><mark style='background:#c8f7c5'>highlighted</mark> tokens are trained</p>"
        return legend + "".join(parts)
