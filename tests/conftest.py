"""Shared fixtures: a tiny tokenizer and model built here, so most tests run offline in seconds."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network, whatever the shell says

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]

# SmolLM2's chat template: ChatML with a default system prompt.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "You are a helpful assistant. Hello! Who are you? I am Lumen, an AI assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "system user assistant tool. Translate this sentence into French, please.",
    "The quick brown fox jumps over the lazy dog. 0123456789 Name? Answer briefly.",
]


def build_tokenizer(chat_template: str = CHATML, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",  # like SmolLM2: padding shares end-of-turn; easyllm must fix it
        chat_template=chat_template,
    )


@pytest.fixture(autouse=True)
def fp32_on_every_cpu(monkeypatch):
    """Tests compare numbers, so the CPU trains in fp32 whether or not its bf16 matmuls are fast.

    (easyllm measures that per machine; tests of the bf16 choice and of bf16 training set it.)
    """
    monkeypatch.setattr("easyllm.train.resources.cpu_bf16_speedup", lambda: 1.0)


@pytest.fixture(autouse=True)
def private_encoding_cache(monkeypatch, tmp_path_factory):
    """A per-test encoding cache (not in tmp_path, which tests inspect), never the user's cache."""
    folder = tmp_path_factory.mktemp("encoded-cache")
    monkeypatch.setattr("easyllm.data.encoded_cache.cache_root", lambda: folder)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama with random weights and the tiny tokenizer, saved as a model folder.

    Widths are multiples of 64, the 4-bit block size bitsandbytes needs for QLoRA.
    """
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def chats() -> list[dict]:
    """Twelve short conversations in the messages format."""
    rows = []
    for index in range(12):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Who are you? ({index})"},
                    {"role": "assistant", "content": "I am Lumen, an AI assistant."},
                ]
            }
        )
    return rows
