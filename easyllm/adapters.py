"""Make a model trainable by method: LoRA on all linear layers, QLoRA, or full fine-tuning."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from .config import TrainSettings


def make_trainable(
    model: PreTrainedModel, settings: TrainSettings, task_type: str = "CAUSAL_LM"
) -> PreTrainedModel:
    """Return the model to hand to the Trainer; an existing adapter keeps training."""
    keep_4bit_weights_trainable(model)
    if settings.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    if isinstance(model, PeftModel):
        return model
    if settings.method == "qlora":
        # Freezes the 4-bit base and keeps norms in fp32; checkpointing stays the user's choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        task_type=task_type,  # SEQ_CLS keeps a classification head fully trained
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
    )
    return get_peft_model(model, config)


def keep_4bit_weights_trainable(model: PreTrainedModel) -> None:
    """Undo and prevent bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's weights the first
    time it runs in eval mode (generate(), or the Trainer's evaluation) and afterwards
    multiplies with a kernel that has no backward pass: later QLoRA steps would silently
    lose the gradient through every base layer. Training needs the autograd path.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )


def is_4bit(model: PreTrainedModel) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
