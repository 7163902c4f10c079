"""Held-out evaluation: loss and perplexity per trained token, and replies generated and scored.

Loss is weighted by trained token (not averaged per batch) and never materialises a
[tokens, vocab] logits tensor. Generation metrics answer held-out prompts with the training
template, greedily, and score the replies against the reference replies (`text_metrics`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import Dataset

from ..data.encoding import ChatEncoder
from ..data.formats import Message
from ..files import write_json_atomic
from ..notebook import Metrics, html_grid, in_notebook
from ..train.loss import trained_token_loss
from .generation import Reply, generate_batch
from .text_metrics import score_replies

EVALUATION_FILE = "evaluation.json"


@torch.inference_mode()
def evaluate_loss(
    model, dataset: Dataset, collator: Callable, batch_size: int = 8
) -> dict[str, float]:
    """Mean cross-entropy over every trained token of `dataset`, and its perplexity."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {key: value.to(device) for key, value in batch.items()}
        loss_sum, count = trained_token_loss(model, batch)
        total_loss += loss_sum.item()
        total_tokens += count
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "eval_examples": len(dataset),
        "eval_tokens": total_tokens,
    }


# -- generation metrics ----------------------------------------------------------------------
class Reference(NamedTuple):
    """A held-out prompt (the conversation before its last reply) and the reply it should get."""

    prompt: list[Message]
    reply: str


@dataclass(frozen=True)
class Answerer:
    """A model that answers prompts: its weights, its template, and a context it must run in.

    The base of a LoRA model is the same object with the adapter off
    (`context=model.disable_adapter`): no second copy of the weights.
    """

    label: str  # shown in tables and progress bars
    model: Any
    encoder: ChatEncoder
    context: Callable[[], AbstractContextManager] | None = None


@dataclass(frozen=True)
class Sample:
    """One held-out prompt side by side: the reference, the model's reply, the compared one's."""

    prompt: list[Message]
    reference: str
    reply: str
    finish_reason: str  # "stop" or "length" (cut off at max_new_tokens: a runaway)
    other_reply: str | None = None
    other_finish_reason: str | None = None


MIN_NEW_TOKENS = 256  # a chat model's long but finished answer must not count as a runaway


def default_max_new_tokens(references: Sequence[Reference], tokenizer) -> int:
    """256 tokens, or twice the longest reference plus 16 if more: room for any finished answer."""
    return max(
        MIN_NEW_TOKENS,
        2 * max(_token_counts(tokenizer, [r.reply for r in references]), default=0) + 16,
    )


def answer(
    answerer: Answerer, references: Sequence[Reference], *, max_new_tokens: int, batch_size: int
) -> list[Reply]:
    """Greedy replies to each prompt, `batch_size` at a time, with a progress bar."""
    from tqdm.auto import tqdm

    prompts = [reference.prompt for reference in references]
    starts = tqdm(
        range(0, len(prompts), batch_size),
        desc=f"generating ({answerer.label})",
        unit="batch",
        disable=not (sys.stderr.isatty() or in_notebook()),
    )
    with (answerer.context or nullcontext)():
        return [
            reply
            for start in starts
            for reply in generate_batch(
                answerer.model,
                answerer.encoder,
                prompts[start : start + batch_size],
                max_new_tokens,
                batch_size=batch_size,
            )
        ]


def reply_metrics(
    replies: Sequence[Reply], references: Sequence[Reference], tokenizer
) -> dict[str, float]:
    """Scores against the references, the runaway rate, and mean lengths in tokens.

    A reply's length is what the model produced (end-of-turn not counted); a reference's, its text
    in `tokenizer` (the answering model's).
    """
    wanted = [reference.reply for reference in references]
    produced = [reply.generated_tokens - (reply.finish_reason == "stop") for reply in replies]
    return {
        **score_replies([reply.text for reply in replies], wanted),
        "runaway_rate": sum(reply.finish_reason == "length" for reply in replies) / len(replies),
        "mean_reply_tokens": _mean(produced),
        "mean_reference_tokens": _mean(_token_counts(tokenizer, wanted)),
        "generated_replies": len(replies),
    }


def compare_replies(
    own: Answerer,
    other: Answerer | None,
    references: Sequence[Reference],
    *,
    prefix: str = "",
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[Sample]]:
    """Both models answer the same prompts: the metrics (the other's under `prefix`) and samples.

    `max_new_tokens` None: `default_max_new_tokens` (in `own`'s tokens), one limit for both models.
    """
    tokenizer = own.encoder.tokenizer
    limit = (
        default_max_new_tokens(references, tokenizer) if max_new_tokens is None else max_new_tokens
    )
    replies = answer(own, references, max_new_tokens=limit, batch_size=batch_size)
    metrics = reply_metrics(replies, references, tokenizer)
    others: list[Reply | None] = [None] * len(replies)
    if other is not None:
        others = answer(other, references, max_new_tokens=limit, batch_size=batch_size)
        compared = reply_metrics(others, references, other.encoder.tokenizer)
        metrics |= {prefix + name: value for name, value in compared.items()}
    pairs = zip(references, replies, others, strict=True)
    return metrics, [
        Sample(
            ref.prompt,
            ref.reply,
            reply.text,
            reply.finish_reason,
            o.text if o else None,
            o.finish_reason if o else None,
        )
        for ref, reply, o in pairs
    ]


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


# -- the result ------------------------------------------------------------------------------
class EvalResult(Metrics):
    """What `evaluate()` returns: a dict of flat metrics plus the replies they were computed from.

    The compared model's metrics sit beside the model's own under `prefix` ("base_" for the
    model with its adapter off, "compare_" for another runner). Renders as side-by-side tables
    in notebooks; `to_json()` holds everything, and is what evaluation.json contains.

    >>> result = runner.evaluate(compare=True)  # doctest: +SKIP
    >>> result["rouge_l"], result["base_rouge_l"], result.samples[0].reply  # doctest: +SKIP
    """

    def __init__(
        self,
        metrics: Mapping[str, float] | None = None,
        *,
        samples: Sequence[Sample] = (),
        compared_with: str | None = None,
        prefix: str = "",
        data: str = "",
    ) -> None:
        super().__init__(metrics or {})
        self.samples = list(samples)
        self.compared_with = compared_with
        self.prefix = prefix
        self.data = data

    def own(self) -> dict[str, float]:
        """The model's own metrics (without the compared model's)."""
        return {k: v for k, v in self.items() if not (self.prefix and k.startswith(self.prefix))}

    def compared(self) -> dict[str, float]:
        """The compared model's metrics, under the same names as the model's own."""
        return {
            k.removeprefix(self.prefix): v
            for k, v in self.items()
            if self.prefix and k.startswith(self.prefix)
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "compared_with": self.compared_with,
            "metrics": dict(self),
            "samples": [asdict(sample) for sample in self.samples],
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    def _repr_html_(self, shown: int = 5) -> str:
        other = self.compared()
        header = ["metric", "model"] + (
            [self.compared_with or "compared"] if self.compared_with else []
        )
        rows = [
            [name, value] + ([other.get(name, "")] if self.compared_with else [])
            for name, value in self.own().items()
        ]
        tables = [html_grid(header, rows, f"evaluation{f' on {self.data}' if self.data else ''}")]
        if self.samples:
            columns = ["prompt", "reference", "reply"] + (
                [self.compared_with or "other"] if self.compared_with else []
            )
            cells = [
                [_last_text(s.prompt), s.reference, _marked(s.reply, s.finish_reason)]
                + (
                    [_marked(s.other_reply or "", s.other_finish_reason)]
                    if self.compared_with
                    else []
                )
                for s in self.samples[:shown]
            ]
            tables.append(
                html_grid(
                    columns,
                    cells,
                    f"{min(shown, len(self.samples))} of {len(self.samples)} replies",
                )
            )
        return "".join(tables)


def _last_text(prompt: list[Message]) -> str:
    return str(prompt[-1].get("content") or "") if prompt else ""


def _marked(text: str, finish_reason: str | None) -> str:
    return text + (" [cut off at max_new_tokens]" if finish_reason == "length" else "")
