"""Odds Ratio Preference Optimization: SFT on the chosen reply plus a penalty on the rejected one.

Same pairs as DPO, but no reference model at all, so it costs one forward pass per reply and
can start from a base model. The loss is TRL's `ORPOTrainer` (in `trl.experimental.orpo` since
TRL 1.x), fed token ids from easyllm's encoder.

>>> runner = ModelRunner(task="orpo")
>>> pair = {"prompt": "Hi", "chosen": "Hello! How can I help?", "rejected": "What."}
>>> runner.load_data([pair] * 8)
>>> runner.train().metrics["eval_reward_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.encoding import IGNORE_INDEX
from ..data.prepared import PreparedData
from . import preference
from .base import register_task

BETA = 0.1  # TRL's default weight of the odds-ratio term (lambda in the paper)
TRL_MODULE = "trl.experimental.orpo"


def _from_ids(self, feature, model=None) -> dict[str, list[int]]:
    """ORPO's columns from ours: prompt + reply ids, with the prompt masked out of the labels."""
    prompt = feature["prompt_ids"]
    batch = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in preference.SIDES:
        reply = feature[f"{side}_ids"]
        batch[f"{side}_input_ids"] = prompt + reply
        batch[f"{side}_attention_mask"] = [1] * (len(prompt) + len(reply))
        batch[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + reply
    return batch


def orpo_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    args: TrainingArguments,
) -> Trainer:
    config_cls = preference.trl_class(TRL_MODULE, "ORPOConfig")
    trainer_cls = preference.pretokenized(TRL_MODULE, "ORPOTrainer", "tokenize_row", _from_ids)
    config = preference.trl_config(config_cls, args, beta=BETA, max_length=data.max_length)
    return trainer_cls(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
    )


def orpo_metrics(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int
) -> dict[str, float]:
    """ORPO's own view of held-out pairs: per-token log-probs, their odds ratio, the chosen NLL."""
    mean_logps = {}
    for side in preference.SIDES:
        sums, counts = preference.completion_logps(
            model, dataset["prompt_ids"], dataset[f"{side}_ids"], tokenizer.pad_token_id, batch_size
        )
        mean_logps[side] = sums / counts.clamp(min=1)
    chosen, rejected = mean_logps["chosen"], mean_logps["rejected"]
    # log odds(chosen) - log odds(rejected), odds = p / (1 - p) of the per-token mean probability
    # (TRL's `log_odds_chosen`)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return {
        "eval_reward_accuracy": (chosen > rejected).float().mean().item(),
        "eval_reward_margin": (BETA * (chosen - rejected)).mean().item(),
        "eval_log_odds_chosen": log_odds.mean().item(),
        "eval_chosen_nll": (-chosen).mean().item(),
        "eval_pairs": len(dataset),
    }


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable near 0."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-7)))


register_task(
    "orpo", preference.PreferenceTask("orpo", preference.parse_pair, orpo_trainer, orpo_metrics)
)
