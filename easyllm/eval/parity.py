"""Merge parity: does the merged model answer like the adapter it came from?

Merging folds LoRA's B·A into the base weights; done right, the merged model gives the same
greedy tokens as base + adapter, and the same log-probabilities up to float rounding. A wrong
base, a wrong scale or a lossy merge shows up here before the model is shipped. An adapter
trained on a 4-bit base (QLoRA) is merged into full-precision weights, which the adapter never
saw: small differences are then the base's quantization error, and the report says so.

>>> prompts = parity_prompts(runner.encoder)  # doctest: +SKIP
>>> report = merge_parity(runner.model, merged, runner.encoder, prompts)  # doctest: +SKIP
>>> print(report.summary)  # doctest: +SKIP
merge parity: 4 of 4 prompts give the same greedy tokens (100.0% of tokens), log-prob drift ...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig

from ..data.encoding import IGNORE_INDEX, ChatEncoder
from ..methods import is_4bit, without_adapter

if TYPE_CHECKING:
    from datasets import Dataset

PARITY_FILE = "parity.json"
DRIFT_TOLERANCE = 1e-3  # float32 merges drift by ~1e-6; a wrong merge by far more than this
PROBE_PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
    ],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
]


@dataclass
class PromptParity:
    """One prompt: both models' greedy replies and how far their log-probabilities drift."""

    adapter_reply: str
    merged_reply: str
    same_tokens: bool
    agreeing_tokens: int  # positions where both chose the same token
    compared_tokens: int  # the longer of the two replies
    max_logprob_drift: float


@dataclass
class ParityReport:
    """Agreement of merged and adapter model on a few held-out prompts; `ok` when they match."""

    prompts: int
    identical: float  # share of prompts with identical greedy token sequences
    token_agreement: float  # share of reply positions where both chose the same token
    max_logprob_drift: float  # of the adapter's chosen tokens, teacher-forced through both models
    mean_logprob_drift: float
    quantized_base: bool  # the adapter ran on a 4-bit base, merged into its de-quantized weights
    tolerance: float = DRIFT_TOLERANCE
    details: list[PromptParity] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.identical == 1.0 and self.max_logprob_drift <= self.tolerance

    @property
    def summary(self) -> str:
        """One line: agreement, drift and the verdict."""
        same = round(self.identical * self.prompts)
        line = (
            f"merge parity: {same} of {self.prompts} prompts give the same greedy tokens "
            f"({self.token_agreement:.1%} of tokens), "
            f"log-prob drift max {self.max_logprob_drift:.2g}, mean {self.mean_logprob_drift:.2g}"
        )
        if self.ok:
            return line + ": the merged model answers like the adapter."
        return line + (
            f": the merged model does NOT answer like the adapter (tolerance {self.tolerance:g}); "
            "check that it was merged into the same base model the adapter was trained on."
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "summary": self.summary}

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / PARITY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def __str__(self) -> str:
        lines = [self.summary]
        for number, detail in enumerate(self.details, 1):
            if not detail.same_tokens:
                lines.append(
                    f"  prompt {number}: adapter {detail.adapter_reply!r}, "
                    f"merged {detail.merged_reply!r}"
                )
        return "\n".join(lines)


def parity_prompts(
    encoder: ChatEncoder, validation: Dataset | None = None, limit: int = 4
) -> list[list[int]]:
    """Prompt ids to compare on: the first `limit` held-out examples, cut before their first reply.

    Without held-out rows (or with none that has a reply), the first `limit` PROBE_PROMPTS.
    """
    prompts = []
    if validation is not None and {"input_ids", "labels"} <= set(validation.column_names):
        for row in validation.select(range(min(limit, len(validation)))):
            first = next((i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX), 0)
            if first > 0:
                prompts.append(list(row["input_ids"][:first]))
    return prompts or [encoder.encode_prompt(messages) for messages in PROBE_PROMPTS[:limit]]


@torch.inference_mode()
def merge_parity(
    adapter_model,
    merged_model,
    encoder: ChatEncoder,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 16,
    tolerance: float = DRIFT_TOLERANCE,
) -> ParityReport:
    """Greedy replies of both models to each prompt, and the log-prob drift of the adapter's tokens.

    One prompt at a time (no padding to tell apart): both models generate greedily; then the
    adapter's whole sequence is scored by both, and the drift is the absolute difference of the
    log-probability each gives the tokens the adapter chose.
    """
    if not prompts or max_new_tokens < 1:
        raise ValueError("merge_parity needs at least one prompt and max_new_tokens >= 1")
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=encoder.end_of_turn_ids,
        pad_token_id=encoder.tokenizer.pad_token_id,
    )
    modes = [(model, model.training) for model in (adapter_model, merged_model)]
    for model, _ in modes:
        model.eval()
    try:
        compared = [
            _prompt_parity(adapter_model, merged_model, encoder, prompt, config)
            for prompt in prompts
        ]
    finally:
        for model, training in modes:
            model.train(training)
    details = [detail for detail, _ in compared]
    every = torch.cat([drift for _, drift in compared])
    base = without_adapter(adapter_model)
    return ParityReport(
        prompts=len(details),
        identical=sum(d.same_tokens for d in details) / len(details),
        token_agreement=sum(d.agreeing_tokens for d in details)
        / max(sum(d.compared_tokens for d in details), 1),
        max_logprob_drift=float(every.max()) if every.numel() else 0.0,
        mean_logprob_drift=float(every.mean()) if every.numel() else 0.0,
        quantized_base=is_4bit(base) and not is_4bit(merged_model),
        tolerance=tolerance,
        details=details,
    )


def _prompt_parity(
    adapter_model, merged_model, encoder: ChatEncoder, prompt: list[int], config: GenerationConfig
) -> tuple[PromptParity, torch.Tensor]:
    """Both models' greedy replies to `prompt`, and the drift on each token the adapter chose."""
    adapter_reply = _greedy(adapter_model, prompt, config)
    merged_reply = _greedy(merged_model, prompt, config)
    sequence = prompt + adapter_reply
    drift = (
        _chosen_logprobs(adapter_model, sequence, len(prompt))
        - _chosen_logprobs(merged_model, sequence, len(prompt))
    ).abs()
    detail = PromptParity(
        adapter_reply=encoder.tokenizer.decode(adapter_reply),
        merged_reply=encoder.tokenizer.decode(merged_reply),
        same_tokens=adapter_reply == merged_reply,
        agreeing_tokens=sum(a == b for a, b in zip(adapter_reply, merged_reply)),
        compared_tokens=max(len(adapter_reply), len(merged_reply)),
        max_logprob_drift=float(drift.max()) if drift.numel() else 0.0,
    )
    return detail, drift


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _greedy(model, prompt: list[int], config: GenerationConfig) -> list[int]:
    ids = torch.tensor([prompt], device=_device(model))
    output = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
    )
    return output[0, len(prompt) :].tolist()


def _chosen_logprobs(model, sequence: list[int], prompt_length: int) -> torch.Tensor:
    """Log-probability the model gives each token after the prompt (float32, on the CPU)."""
    ids = torch.tensor([sequence], device=_device(model))
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits = output.logits[0, prompt_length - 1 : -1]
    chosen = ids[0, prompt_length:]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, chosen[:, None])[:, 0].cpu()


def check_merge_parity(
    adapter_model,
    merged_model,
    encoder: ChatEncoder,
    data: Any = None,
    prompt_ids: list[list[int]] | None = None,
) -> ParityReport:
    """`merge_parity` (printed) on `prompt_ids`, else held-out prompts of `data`, else probes."""
    if not prompt_ids:
        prompt_ids = parity_prompts(encoder, data.validation if data is not None else None)
    report = merge_parity(adapter_model, merged_model, encoder, prompt_ids)
    print(f"easyllm: {report}")
    return report
