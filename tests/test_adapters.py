"""QLoRA merges go into the weights the adapter was trained on: the de-quantized 4-bit ones."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from easyllm.adapters import copy_dequantized_weights, keep_4bit_weights_trainable


def test_dequantized_copy_answers_exactly_like_the_4bit_model(tiny_model_dir):
    four_bit = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    keep_4bit_weights_trainable(four_bit)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.arange(5, 45).unsqueeze(0)
    with torch.no_grad():
        quantized_logits = four_bit(ids).logits
        assert (full(ids).logits - quantized_logits).abs().max() > 1e-3  # the originals differ

        copied = copy_dequantized_weights(four_bit, full)

        assert copied == 2 * 7  # every linear layer of both decoder layers
        assert torch.equal(full(ids).logits, quantized_logits)
