"""Model loading: the built-in default, clear errors offline, and a safe pad token."""

from __future__ import annotations

import pytest
from conftest import build_tokenizer

from easyllm import ModelLoadError, ModelRunner, UnknownNameError
from easyllm.modeling import BUILTIN_MODELS, builtin_model_folder, ensure_pad_token, resolve_model


def test_unknown_hub_id_offline_says_what_to_do():
    with pytest.raises(ModelLoadError) as caught:
        ModelRunner("no-such-org/no-such-model")
    message = str(caught.value)
    assert "'no-such-org/no-such-model'" in message
    assert "offline" in message
    assert "ModelRunner('./my-model')" in message  # how to point at a local folder
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no hub traceback


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="Model folder not found"):
        resolve_model(str(tmp_path / "missing"))


def test_unknown_task_lists_registered_ones(tiny_model_dir):
    with pytest.raises(UnknownNameError, match="Unknown task 'sfx'. Registered: sft"):
        ModelRunner(str(tiny_model_dir), task="sfx")


def test_builtin_default_is_cached_as_safetensors():
    folder = builtin_model_folder(BUILTIN_MODELS.get("smollm2-135m-instruct"))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert resolve_model(None) == resolve_model("SmolLM2-135M-Instruct") == str(folder)
    assert "quantization_config" not in (folder / "config.json").read_text()


@pytest.mark.parametrize(
    ("pad", "unk", "expected"),
    [
        ("<|im_end|>", "<|endoftext|>", "<|endoftext|>"),  # SmolLM2: pad == end-of-turn
        (None, "<|endoftext|>", "<|endoftext|>"),
        (None, None, "<|endoftext|>"),
    ],
)
def test_pad_token_is_never_the_end_of_turn_token(pad, unk, expected):
    tokenizer = build_tokenizer()
    tokenizer.pad_token, tokenizer.unk_token = pad, unk
    end_of_turn = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ensure_pad_token(tokenizer, None, end_of_turn)
    assert tokenizer.pad_token == expected and tokenizer.pad_token_id not in end_of_turn


def test_pad_token_is_added_when_no_special_token_is_free():
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    tokenizer.unk_token = None
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    before = len(tokenizer)
    ensure_pad_token(tokenizer, None, ids)
    assert tokenizer.pad_token == "<|pad|>" and len(tokenizer) == before + 1
