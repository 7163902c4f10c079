"""Weights under an adapter: 4-bit layers kept trainable, counted, and de-quantized for merges."""

from __future__ import annotations

from transformers import PreTrainedModel


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


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def copy_dequantized_weights(quantized: PreTrainedModel, target: PreTrainedModel) -> int:
    """Overwrite `target`'s linear weights with the de-quantized 4-bit weights of `quantized`.

    A QLoRA adapter learned its correction on top of the 4-bit weights, not the originals:
    merging it into the de-quantized weights gives a model that answers exactly like the
    adapter did. Returns how many layers were copied.
    """
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit

    # The CPU inference packing cannot be de-quantized directly.
    keep_4bit_weights_trainable(quantized)
    targets = dict(target.named_modules())
    copied = 0
    for name, module in quantized.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        plain = targets.get(_plain_name(name))
        if plain is None:
            raise KeyError(
                f"{name}: no layer of that name in the full-precision model to merge into"
            )
        weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
        plain.weight.data.copy_(weight.reshape(plain.weight.shape).to(plain.weight.dtype))
        copied += 1
    return copied


def _plain_name(name: str) -> str:
    """A layer's name inside a peft-wrapped model -> its name in the plain transformers model."""
    return name.removeprefix("base_model.model.").removesuffix(".base_layer")
