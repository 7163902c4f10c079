"""What causal-LM tasks (SFT, pre-training, ...) share: model loading, the trainer, the loss metrics."""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from ..data.collator import PaddingCollator
from ..data.packing import PackedCollator
from ..evaluation import evaluate_loss
from ..modeling import load_causal_lm
from ..training import TrainedTokenTrainer
from .base import PreparedData


def load_model(source: str, *, quantize_4bit: bool, trust_remote_code: bool, data=None) -> PreTrainedModel:
    return load_causal_lm(source, quantize_4bit=quantize_4bit, trust_remote_code=trust_remote_code)


def build_trainer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData, args: TrainingArguments,
    settings,
) -> TrainedTokenTrainer:
    """The Trainer with the trained-positions-only loss; packed batches unless packing=False."""
    if settings.packing:
        collator = PackedCollator(tokenizer.pad_token_id, data.max_length)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id)
    return TrainedTokenTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
        data_collator=collator, processing_class=tokenizer,
    )


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int):
    return evaluate_loss(model, dataset, PaddingCollator(tokenizer.pad_token_id), batch_size)
