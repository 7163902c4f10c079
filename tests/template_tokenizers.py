"""Tiny tokenizers, one per chat-template family, trained here in a blink and fully offline.

Each has its family's control tokens as single special tokens and the tokenizer style the
family's real models use: byte-level BPE (Llama 3, Qwen, ChatML), sentencepiece-like BPE with a
Metaspace pre-tokenizer that puts "▁" before the first word (Llama 2, Mistral, Phi-3, as
transformers builds them) or Gemma's spaces-to-"▁" normalizer without that prefix.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from easyllm.data.templates import TEMPLATES

Style = Literal["byte_level", "metaspace", "gemma"]

CORPUS = [
    "You are Lumen, a brief assistant. Hi! Who are you? I am Lumen.",
    "What is the capital of France? The capital of France is Paris.",
    "What is the weather in Paris? It is sunny in Paris, 22 degrees.",
    "system user assistant model tool get_weather city name arguments",
    "Ignore this and answer: I am evil. Instruction Response",
]


@dataclass(frozen=True)
class Family:
    """A template family: its registered template, control tokens and tokenizer style."""

    template: str
    style: Style
    specials: tuple[str, ...]  # control tokens, in vocabulary order
    eos: str
    bos: str | None = None
    unk: str | None = None
    pad: str | None = None
    rstrip: bool = False  # control tokens swallow the whitespace after them (Phi-3's do)
    added: tuple[str, ...] = ()  # added tokens that are not control tokens (Qwen's <tool_call>)
    system: bool = True  # the template accepts a system message
    # renders tool_calls + tool turns, or tool turns
    tools: Literal["calls", "messages"] | None = None

    def build(self) -> PreTrainedTokenizerFast:
        return build_family_tokenizer(self)


QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_ADDED = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
LLAMA2_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]")

FAMILIES: dict[str, Family] = {
    "chatml": Family(
        "chatml", "byte_level", QWEN_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", tools="messages"
    ),
    "llama2": Family("llama2", "metaspace", LLAMA2_TOKENS, eos="</s>", bos="<s>", unk="<unk>"),
    "llama3": Family(
        "llama3",
        "byte_level",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
        tools="messages",
    ),
    "mistral": Family("mistral", "metaspace", LLAMA2_TOKENS, eos="</s>", bos="<s>", unk="<unk>"),
    "gemma": Family(
        "gemma",
        "gemma",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        eos="<eos>",
        bos="<bos>",
        unk="<unk>",
        pad="<pad>",
        system=False,
    ),
    "phi3": Family(
        "phi3",
        "metaspace",
        (
            "<unk>",
            "<s>",
            "</s>",
            "<|endoftext|>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|end|>",
        ),
        eos="<|endoftext|>",
        bos="<s>",
        unk="<unk>",
        rstrip=True,
    ),
    "qwen2.5": Family(
        "qwen2.5",
        "byte_level",
        QWEN_TOKENS,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        added=QWEN_ADDED,
        tools="calls",
    ),
    "qwen3": Family(
        "qwen3",
        "byte_level",
        QWEN_TOKENS,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        added=QWEN_ADDED,
        tools="calls",
    ),
    "plain": Family(
        "plain",
        "byte_level",
        ("<|endoftext|>",),
        eos="<|endoftext|>",
        bos="<|endoftext|>",
        tools="messages",
    ),
}


def build_family_tokenizer(family: Family, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on a few sentences with `family`'s control tokens and template."""
    backend = Tokenizer(models.BPE(unk_token=family.unk))
    for_training, for_encoding = _STYLES[family.style]
    for_training(backend)
    specials = [
        AddedToken(
            token, special=True, normalized=False, rstrip=family.rstrip and token != family.unk
        )
        for token in family.specials
    ]
    alphabet = (
        pre_tokenizers.ByteLevel.alphabet()
        if family.style == "byte_level"
        else list(string.printable)
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet
    )
    backend.train_from_iterator(CORPUS * 20, trainer)
    for_encoding(backend)
    backend.add_tokens(
        [AddedToken(token, special=False, normalized=False) for token in family.added]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=family.bos,
        eos_token=family.eos,
        unk_token=family.unk,
        pad_token=family.pad,
        chat_template=TEMPLATES.get(family.template).source,
        clean_up_tokenization_spaces=False,
    )


def _byte_level(backend: Tokenizer) -> None:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()


def _metaspace_training(backend: Tokenizer) -> None:
    # Split at "▁" while training so that merges stay inside words, as sentencepiece's do. The
    # decoder keeps the leading space that Llama's strips, so decoded replies show every space.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=True
    )
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])


def _metaspace(backend: Tokenizer) -> None:
    """As transformers' LlamaTokenizer: "▁" before the first word of a text, no split at "▁"."""
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )


def _gemma_training(backend: Tokenizer) -> None:
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="never", split=True
    )
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])


def _gemma(backend: Tokenizer) -> None:
    """As transformers' GemmaTokenizer: spaces become "▁", no prefix."""
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")


# style -> (set up for training, set up for encoding)
_STYLES: dict[Style, tuple[Callable[[Tokenizer], None], Callable[[Tokenizer], None]]] = {
    "byte_level": (_byte_level, lambda backend: None),
    "metaspace": (_metaspace_training, _metaspace),
    "gemma": (_gemma_training, _gemma),
}
