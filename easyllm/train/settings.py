"""Training settings: easyllm's own choices plus any `TrainingArguments` field, checked once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from ..errors import ConfigError, with_suggestions
from ..methods import METHODS, Method, get_method
from .resources import needs_gradient_checkpointing, prefers_bf16

TRAINER_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainingArguments) if f.init and f.name != "output_dir"
)
# transformers 5.x renamed gradient_checkpointing* to activation_checkpointing* (the old names
# warn): the name easyllm sets first, then the other name a user may pass.
_RENAMED = "activation_checkpointing" in TRAINER_FIELDS
CHECKPOINTING = ("activation_checkpointing", "gradient_checkpointing")[:: 1 if _RENAMED else -1]
CHECKPOINTING_KWARGS = tuple(f"{name}_kwargs" for name in CHECKPOINTING)
MethodName = str  # a name registered in methods.METHODS: "lora", "qlora", "full", ...


@dataclass
class TrainSettings:
    """How to fine-tune. Anything not listed here goes to `transformers.TrainingArguments`.

    Defaults suit a small model on a CPU: LoRA on every linear layer, a learning rate that
    moves LoRA weights in a few epochs on a small data set (5e-4; full fine-tuning
    gets 2e-5). For models above ~1B parameters a lower rate (1e-4 to 2e-4) is safer.
    """

    method: MethodName = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # dropout costs a quarter of a CPU step and small runs rarely need it
    target_modules: str | list[str] = "all-linear"
    # Several examples per row, attention kept inside each (see data/packing.py).
    packing: bool = True
    # Compile the decoder layers; None: when the run is long enough (compilation.py).
    compile: bool | None = None
    output_dir: str | None = None
    trainer_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method={self.method!r}: choose one of {', '.join(METHODS.names())}")
        if self.lora_r <= 0:
            problems.append(f"lora_r={self.lora_r}: must be a positive integer")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout={self.lora_dropout}: must be in [0, 1)")
        if problems:
            raise ConfigError("Invalid training settings:\n  " + "\n  ".join(problems))

    @property
    def method_entry(self) -> Method:
        """The registered Method named by `method` (methods.py owns what it means)."""
        return get_method(self.method)

    def training_arguments(
        self,
        output_dir: str,
        seed: int,
        has_eval: bool,
        *,
        model_config=None,
        longest_example: int = 1024,
    ) -> TrainingArguments:
        """TrainingArguments with easyllm's defaults; hardware-dependent ones decided here.

        `longest_example`: tokens in the longest example (they bound a step's memory estimate).
        """
        method = self.method_entry
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        batch = self.trainer_args.get("per_device_train_batch_size", 8)
        if "bf16" in self.trainer_args:
            bf16 = self.trainer_args["bf16"]  # the user's choice: nothing to measure
        else:
            bf16 = prefers_bf16(device) and (device.type != "cpu" or method.cpu_bf16())
        defaults: dict[str, Any] = {
            "num_train_epochs": 3,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "learning_rate": method.learning_rate,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.05,
            "weight_decay": 0.0,
            "logging_steps": 1,
            "eval_strategy": "epoch" if has_eval else "no",
            "save_strategy": "no",
            "train_sampling_strategy": "group_by_length",
            "report_to": "none",
            "seed": seed,
            "data_seed": seed,
            "remove_unused_columns": False,
            "dataloader_pin_memory": torch.cuda.is_available(),
            "bf16": bf16,
        }
        checkpointing = model_config is not None and needs_gradient_checkpointing(
            model_config, batch * longest_example, device, bf16
        )
        for names, value in (
            (CHECKPOINTING, checkpointing),
            (CHECKPOINTING_KWARGS, {"use_reentrant": False}),
        ):
            # Either name, old or new, is the user's choice.
            if not set(names) & set(self.trainer_args):
                defaults[names[0]] = value
        args = {**defaults, **self.trainer_args}
        if args["bf16"] and device.type == "cpu" and "use_cpu" not in args:
            # TrainingArguments allows bf16 without a GPU only when told it is on the CPU.
            args["use_cpu"] = True
        return TrainingArguments(output_dir=output_dir, **args)


SETTINGS_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainSettings) if f.name != "trainer_args"
)


def build_settings(base: TrainSettings, overrides: dict[str, Any]) -> TrainSettings:
    """Apply `train(**overrides)`: easyllm settings by name, the others as TrainingArguments."""
    unknown = [key for key in overrides if key not in SETTINGS_FIELDS and key not in TRAINER_FIELDS]
    if unknown:
        hints = [with_suggestions(key, SETTINGS_FIELDS + TRAINER_FIELDS) for key in unknown]
        raise ConfigError(
            f"Unknown training option(s): {', '.join(hints)}. Valid: easyllm settings "
            f"{', '.join(SETTINGS_FIELDS)}, or any transformers.TrainingArguments field."
        )
    own = {key: value for key, value in overrides.items() if key in SETTINGS_FIELDS}
    trainer = {key: value for key, value in overrides.items() if key not in SETTINGS_FIELDS}
    return dataclasses.replace(base, **own, trainer_args={**base.trainer_args, **trainer})
