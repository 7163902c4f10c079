"""Direct Preference Optimization: learn from pairs of a preferred and a rejected reply.

The loss is TRL's `DPOTrainer`; easyllm hands it token ids made with the chat template (see
`preference.py`), so the prompt the model learns from is the one `generate()` gives it. With
LoRA or QLoRA the reference model is the same weights with the adapter disabled (no second
copy); with full fine-tuning TRL computes the reference log-probs once, before training.

>>> runner = ModelRunner(task="dpo")
>>> pair = {"prompt": "Hi", "chosen": "Hello! How can I help?", "rejected": "What."}
>>> runner.load_data([pair] * 8)
>>> runner.train().metrics["eval_reward_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data.prepared import PreparedData
from . import preference
from .base import register_task

BETA = 0.1  # TRL's default: how far the policy may move from the reference


def _keep_ids(self, dataset, processing_class, args, dataset_name):
    return dataset  # already `prompt_ids` / `chosen_ids` / `rejected_ids` from our encoder


def dpo_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    args: TrainingArguments,
) -> Trainer:
    return preference.reference_trainer(
        preference.pretokenized("trl", "DPOTrainer", "_prepare_dataset", _keep_ids),
        preference.trl_class("trl", "DPOConfig"),
        model,
        tokenizer,
        data,
        args,
        beta=BETA,
    )


def dpo_metrics(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int
) -> dict[str, float]:
    """Held-out pairs' implied rewards beta * (log p_policy - log p_reference): accuracy, margin."""
    rewards = {}
    for side in preference.SIDES:
        policy, _ = preference.completion_logps(
            model, dataset["prompt_ids"], dataset[f"{side}_ids"], tokenizer.pad_token_id, batch_size
        )
        reference = preference.reference_logps(
            model, dataset, side, f"ref_{side}_logps", tokenizer.pad_token_id, batch_size
        )
        rewards[side] = BETA * (policy - (policy if reference is None else reference))
    margin = rewards["chosen"] - rewards["rejected"]
    return {
        "eval_reward_accuracy": (margin > 0).float().mean().item(),
        "eval_reward_margin": margin.mean().item(),
        "eval_chosen_reward": rewards["chosen"].mean().item(),
        "eval_rejected_reward": rewards["rejected"].mean().item(),
        "eval_pairs": len(dataset),
    }


register_task(
    "dpo", preference.PreferenceTask("dpo", preference.parse_pair, dpo_trainer, dpo_metrics)
)
