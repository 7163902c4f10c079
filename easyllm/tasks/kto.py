"""Kahneman-Tversky Optimization: learn from single replies labelled good (true) or bad (false).

Unlike DPO it needs no pairs: {"messages": [...], "label": true} or {"prompt", "completion",
"label"} (any SFT row shape plus a boolean label). The loss is TRL's `KTOTrainer`, fed token ids
from easyllm's encoder; the reference is the adapter-disabled base with LoRA/QLoRA, or log-probs
computed once before full fine-tuning.

>>> runner = ModelRunner(task="kto")
>>> runner.load_data([{"prompt": "Hi", "completion": "Hello!", "label": True},
...                   {"prompt": "Hi", "completion": "Go away.", "label": False}] * 4)
>>> runner.train().metrics["eval_reward_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.prepared import PreparedData
from . import preference
from .base import register_task

BETA = 0.1  # TRL's default


def _keep_ids(self, dataset, processing_class, args, dataset_name):
    """Rows already hold `prompt_ids` / `completion_ids`: only add the KL term's mismatched pairs.

    As TRL does: within each batch, every prompt is paired with its neighbour's completion.
    """
    if not self.calculate_KL:
        return dataset

    def rotate(batch):
        return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}

    return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def kto_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    args: TrainingArguments,
) -> Trainer:
    return preference.reference_trainer(
        preference.pretokenized("trl", "KTOTrainer", "_prepare_dataset", _keep_ids),
        preference.trl_class("trl", "KTOConfig"),
        model,
        tokenizer,
        data,
        args,
        beta=BETA,
        train_sampling_strategy="sequential",
    )


def kto_metrics(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int
) -> dict[str, float]:
    """Implied rewards of held-out replies: how often their sign matches the label, and the gap."""
    pad_id = tokenizer.pad_token_id
    policy, _ = preference.completion_logps(
        model, dataset["prompt_ids"], dataset["completion_ids"], pad_id, batch_size
    )
    reference = preference.reference_logps(
        model, dataset, "completion", "ref_logps", pad_id, batch_size
    )
    rewards = BETA * (policy - (policy if reference is None else reference))
    label = torch.tensor(dataset["label"], dtype=torch.bool)
    desirable, undesirable = rewards[label], rewards[~label]
    return {
        "eval_reward_accuracy": _mean(torch.where(label, rewards > 0, rewards < 0).float()),
        "eval_desirable_reward": _mean(desirable),
        "eval_undesirable_reward": _mean(undesirable),
        "eval_reward_margin": _mean(desirable) - _mean(undesirable),
        "eval_examples": len(dataset),
    }


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if len(values) else 0.0


# The KL term pairs neighbouring rows, so TRL reads them in order: shuffle them once in prepare.
register_task(
    "kto",
    preference.PreferenceTask(
        "kto", preference.parse_labelled, kto_trainer, kto_metrics, shuffle_train=True
    ),
)
