"""How a model is fine-tuned: lora, qlora, full, each a registered `Method`.

A method owns every decision that depends on it: how the base model is loaded (full precision
or 4-bit NF4, the one quantization config), how it is wrapped for training (an adapter or all
weights), what a save writes (the adapter, or the full weights), its default learning rate and
whether bf16 autocast may run on the CPU. Everything else asks the method; nothing else
compares method names.

Add one with a single registration:

>>> register_method("dora", Method("dora", learning_rate=5e-4, adapter_options={"use_dora": True}))
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from .registry import Registry

# Heads a 4-bit load keeps in full precision: new classification/reward heads are trained fully.
HEAD_MODULES = ("score", "classifier")


@dataclass(frozen=True)
class Method:
    """One way to fine-tune, as data: what it loads, what it trains, what it saves.

    `adapter`: train a LoRA adapter (peft) on a frozen base, else every weight. `quantize_4bit`:
    load the base in 4-bit NF4 with double quantization (QLoRA). `adapter_options`: extra
    `LoraConfig` fields (e.g. {"use_dora": True}).
    """

    name: str
    learning_rate: float
    adapter: bool = True
    quantize_4bit: bool = False
    adapter_options: dict[str, Any] = field(default_factory=dict)

    @property
    def saves_full_weights(self) -> bool:
        """Whether a save writes the weights themselves (what changed) rather than an adapter."""
        return not self.adapter

    def cpu_bf16(self) -> bool:
        """Whether bf16 autocast may run on a CPU: 4-bit weights use bitsandbytes' fp32 CPU path."""
        return not self.quantize_4bit

    def load_options(self, keep_full_precision: Sequence[str] = ()) -> dict[str, Any]:
        """`from_pretrained` options: float32, or the 4-bit base (new heads in full precision)."""
        options: dict[str, Any] = {"dtype": torch.float32}
        if self.quantize_4bit:
            from transformers import BitsAndBytesConfig

            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32,
                llm_int8_skip_modules=list(keep_full_precision) or None,
            )
            options["device_map"] = {"": "cuda:0"} if torch.cuda.is_available() else {"": "cpu"}
        return options

    def full_precision(self) -> Method:
        """The same method on a full-precision base (what a merge starts from)."""
        return replace(self, quantize_4bit=False)

    def matches(self, model: PreTrainedModel) -> bool:
        """Whether `model` was loaded the way this method loads it (4-bit or not)."""
        return self.quantize_4bit == is_4bit(model)

    def wrap(self, model: PreTrainedModel, settings: Any, task_type: str) -> PreTrainedModel:
        """The model to hand to the Trainer; a model that already has an adapter keeps training it.

        `settings`: the run's TrainSettings (lora_r, lora_alpha, lora_dropout, target_modules).
        """
        if not self.adapter:
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            return model
        if has_adapter(model):
            return model
        # Freezes the 4-bit base, keeps norms in fp32; checkpointing stays the user's choice.
        if self.quantize_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        config = LoraConfig(
            task_type=task_type,  # SEQ_CLS keeps a classification head fully trained
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=settings.target_modules,
            **self.adapter_options,
        )
        with _quiet_peft():
            return get_peft_model(model, config)


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, method: Method, *, replace: bool = False) -> Method:
    """Make `method` available as `ModelRunner(method=name)` and `train(method=name)`."""
    return METHODS.register(name, method, replace=replace)


def get_method(name: str) -> Method:
    """The registered method called `name` (UnknownNameError lists the registered ones)."""
    return METHODS.get(name)


def load_adapter(model: PreTrainedModel, folder: str, *, trainable: bool = True) -> PeftModel:
    """`model` with the adapter saved in `folder` (a save or a staged merge)."""
    with _quiet_peft():
        return PeftModel.from_pretrained(model, folder, is_trainable=trainable)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence peft reading transformers' old `is_gradient_checkpointing` name (which warns)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield


def has_adapter(model: Any) -> bool:
    """Whether `model` is wrapped with a peft adapter."""
    return isinstance(model, PeftModel)


def without_adapter(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if has_adapter(model) else model


def is_4bit(model: Any) -> bool:
    """Whether the (base) model holds 4-bit weights."""
    return bool(getattr(without_adapter(model), "is_loaded_in_4bit", False))


register_method("lora", Method("lora", learning_rate=5e-4))
register_method("qlora", Method("qlora", learning_rate=5e-4, quantize_4bit=True))
register_method("full", Method("full", learning_rate=2e-5, adapter=False))


def make_trainable(
    model: PreTrainedModel, settings: Any, task_type: str = "CAUSAL_LM"
) -> PreTrainedModel:
    """`model` wrapped for training as `settings.method` says (see `Method.wrap`)."""
    return get_method(settings.method).wrap(model, settings, task_type)
