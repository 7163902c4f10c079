"""Nothing drifts: template fingerprints, merge parity, the reproduction record, on tiny models."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import CHATML, build_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from easyllm import ConfigError, ModelRunner
from easyllm.data.encoding import ChatEncoder
from easyllm.eval.parity import PARITY_FILE, merge_parity, parity_prompts
from easyllm.records.drift import (
    TemplateDriftWarning,
    check_template,
    template_differences,
    template_fingerprint,
)
from easyllm.records.reproduce import REPRODUCE_FILE, write_reproduction_record
from easyllm.train.settings import build_settings

FAST = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "disable_tqdm": True}


# -- template fingerprint -----------------------------------------------------------------------
def test_fingerprint_survives_save_and_load_and_an_identical_tokenizer_is_silent(
    tokenizer, tmp_path
):
    saved = json.loads(json.dumps(template_fingerprint(tokenizer)))  # as stored in easyllm.json
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert template_fingerprint(reloaded) == saved
    assert saved["generation_prompt"] == "<|im_start|>assistant\n"
    assert (
        saved["special_tokens"]["eos_token"] == "<|im_end|>"
        and saved["special_ids"]["<|im_end|>"] == 2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_template(saved, reloaded, strict=True, source=str(tmp_path)) == []
        # nothing saved to compare
        assert check_template(None, reloaded, source="an old save") == []


def test_another_template_warns_with_the_difference_and_strict_refuses(tokenizer):
    saved = template_fingerprint(tokenizer)
    other = build_tokenizer(
        chat_template=CHATML.replace("You are a helpful assistant.", "Be brief.")
    )
    with pytest.warns(TemplateDriftWarning) as caught:
        differences = check_template(saved, other, source="runs/lumen")
    message = str(caught[0].message)
    assert message.startswith("runs/lumen: this tokenizer renders chats differently")
    assert "the chat template text differs" in differences
    assert (
        "-You are a helpful assistant.<|im_end|>" in message and "+Be brief.<|im_end|>" in message
    )
    assert "ModelRunner.load('runs/lumen')" in message
    with pytest.raises(ConfigError, match="strict=False"):
        check_template(saved, other, strict=True, source="runs/lumen")


def test_same_template_with_other_special_tokens_or_token_ids_is_caught(tokenizer):
    saved = template_fingerprint(tokenizer)
    other_pad = copy.deepcopy(tokenizer)
    other_pad.pad_token = "<|endoftext|>"
    assert template_differences(saved, other_pad) == [
        "pad_token: '<|im_end|>' then, '<|endoftext|>' now"
    ]

    other_vocab = build_tokenizer(vocab_size=270)  # the same template and text, other merges
    assert template_fingerprint(other_vocab)["probe_text"] == saved["probe_text"]
    differences = template_differences(saved, other_vocab)
    assert len(differences) == 1 and differences[0].startswith(
        "the same rendered text becomes other token ids"
    )

    renamed = build_tokenizer()
    renamed.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert "special token '<|tool|>' is new" in template_differences(saved, renamed)


# -- merge parity -------------------------------------------------------------------------------
def _lora_model(source, seed: int = 0) -> PeftModel:
    """The tiny model plus a LoRA adapter with random B weights (a fresh one changes nothing)."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    return model


def test_a_merged_adapter_answers_like_the_adapter_and_a_wrong_model_is_caught(
    tiny_model_dir, tokenizer, tmp_path
):
    encoder = ChatEncoder(tokenizer)
    adapter = _lora_model(tiny_model_dir)
    merged = copy.deepcopy(adapter).merge_and_unload()
    prompts = parity_prompts(encoder)

    report = merge_parity(adapter, merged, encoder, prompts, max_new_tokens=12)
    assert report.ok and report.identical == 1.0 and report.token_agreement == 1.0
    assert report.prompts == len(prompts) == 4 and report.max_logprob_drift < 1e-4
    assert not report.quantized_base and "answers like the adapter" in str(report)
    report.write(tmp_path)
    assert json.loads((tmp_path / PARITY_FILE).read_text())["ok"] is True

    # the adapter left out: it does matter
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert merge_parity(adapter, base, encoder, prompts).max_logprob_drift > 1e-2

    with torch.no_grad():
        merged.model.layers[0].mlp.down_proj.weight.add_(
            torch.randn_like(merged.model.layers[0].mlp.down_proj.weight)
        )
    perturbed = merge_parity(adapter, merged, encoder, prompts, max_new_tokens=12)
    assert not perturbed.ok and perturbed.max_logprob_drift > 1e-2
    assert "does NOT answer like the adapter" in perturbed.summary


def test_runner_merge_keeps_parity_on_held_out_prompts(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=2)
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    runner.merge(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    prompts = parity_prompts(runner.encoder, runner.data.validation)
    assert len(prompts) == 2 and all(
        runner.tokenizer.decode(p).endswith("<|im_start|>assistant\n") for p in prompts
    )
    report = merge_parity(runner.model, merged, runner.encoder, prompts)
    assert report.ok and report.max_logprob_drift < 1e-4, str(report)


def test_a_qlora_adapter_merges_into_its_dequantized_weights(tiny_model_dir, tokenizer, tmp_path):
    from easyllm.adapters import copy_dequantized_weights, keep_4bit_weights_trainable
    from easyllm.methods import get_method
    from easyllm.modeling import load_causal_lm

    base_4bit = load_causal_lm(str(tiny_model_dir), **get_method("qlora").load_options())
    keep_4bit_weights_trainable(base_4bit)
    torch.manual_seed(0)
    adapter = get_peft_model(base_4bit, LoraConfig(r=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    adapter.save_pretrained(tmp_path / "adapter")
    encoder = ChatEncoder(tokenizer)
    prompts = parity_prompts(encoder, limit=2)

    # not what the adapter was trained on
    originals = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = PeftModel.from_pretrained(originals, tmp_path / "adapter").merge_and_unload()
    report = merge_parity(adapter, merged, encoder, prompts, max_new_tokens=4)
    assert report.quantized_base and not report.ok and report.max_logprob_drift > report.tolerance

    dequantized = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    copy_dequantized_weights(adapter.get_base_model(), dequantized)
    merged = PeftModel.from_pretrained(dequantized, tmp_path / "adapter").merge_and_unload()
    report = merge_parity(adapter, merged, encoder, prompts, max_new_tokens=4)
    assert report.ok and report.max_logprob_drift < 1e-4, str(report)


# -- the reproduction record --------------------------------------------------------------------
def _record(runner: ModelRunner, folder, data_path, overrides: dict) -> dict:
    settings = build_settings(runner.settings, overrides)
    path = write_reproduction_record(
        folder,
        model_name=runner.model_name,
        model_source=runner._source,
        task=runner.task_name,
        settings=settings,
        seed=runner.seed,
        data=runner.data,
        tokenizer=runner.tokenizer,
        template=runner.template,
        data_path=data_path,
        data_options=None,
        manifest=None,
    )
    assert path == folder / REPRODUCE_FILE
    return json.loads(path.read_text())


def test_the_record_holds_what_decides_the_run_and_no_token(
    tiny_model_dir, chats, tmp_path, monkeypatch
):
    secret, other = "hf_TopSecretToken1234567890", "hf_AnotherSecretToken0987654321"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(
        "sys.argv", ["train.py", "--token", secret, f"--hub-token={other}", "--epochs", "2"]
    )
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in chats))
    runner = ModelRunner(str(tiny_model_dir), seed=7)
    runner.load_data(str(data), val_size=2)
    record = _record(runner, tmp_path, data, {"learning_rate": 1e-3, **FAST})

    text = (tmp_path / REPRODUCE_FILE).read_text()
    assert secret not in text and other not in text
    assert record["command"] == [
        "train.py",
        "--token",
        "<redacted>",
        "--hub-token=<redacted>",
        "--epochs",
        "2",
    ]
    assert (
        record["model"]["source"] == str(tiny_model_dir)
        and record["task"] == "sft"
        and record["seed"] == 7
    )
    assert record["settings"]["learning_rate"] == 1e-3 and record["settings"]["lora_r"] == 16
    packages = record["environment"]["packages"]
    assert (
        packages["torch"] == torch.__version__.split("+")[0]
        or packages["torch"] == torch.__version__
    )
    assert set(packages) >= {
        "transformers",
        "peft",
        "trl",
        "datasets",
        "accelerate",
        "bitsandbytes",
    }
    assert record["data"]["source"] == str(data) and record["data"]["rows"] == 12
    assert record["data"]["train_examples"] == 10 and record["data"]["validation_examples"] == 2
    assert record["template"]["rendering"] == template_fingerprint(runner.tokenizer)
    assert record["tokenizer"]["fingerprint"] and record["template"]["name"] == "tokenizer"
    assert "template=" not in record["reproduce"]  # the tokenizer's own: ModelRunner picks it again
    assert (
        f"runner.load_data({str(data)!r})  # + the load_data() options used (not recorded)"
        in record["reproduce"]
    )

    changed = [
        dict(chats[0], messages=[chats[0]["messages"][0], {"role": "assistant", "content": "Hi."}]),
        *chats[1:],
    ]
    runner.load_data(changed, val_size=2)
    (tmp_path / "again").mkdir()
    again = _record(runner, tmp_path / "again", None, FAST)
    assert again["data"]["fingerprints"] != record["data"]["fingerprints"]
    assert "rows = ..." in again["reproduce"]


def test_the_snippet_in_the_record_trains_the_same_weights(
    tiny_model_dir, chats, tmp_path, monkeypatch
):
    from easyllm.tasks.base import DataOptions

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in chats))
    runner = ModelRunner(str(tiny_model_dir), template="chatml")
    runner.load_data(str(data), val_size=3, max_length=256)
    overrides = {"learning_rate": 1e-2, "lora_r": 4, **FAST}
    runner.train(output_dir=str(tmp_path / "run"), **overrides)
    path = write_reproduction_record(
        tmp_path / "run",
        model_name=runner.model_name,
        model_source=runner._source,
        task=runner.task_name,
        settings=runner.settings,
        seed=runner.seed,
        data=runner.data,
        tokenizer=runner.tokenizer,
        template=runner.template,
        data_path=data,
        data_options=DataOptions(val_size=3, max_length=256, seed=42),
    )
    snippet = json.loads(path.read_text())["reproduce"]
    assert f"runner.load_data({str(data)!r}, val_size=3, max_length=256)" in snippet
    assert "template='chatml'" in snippet and "output_dir" not in snippet

    monkeypatch.chdir(tmp_path)  # the re-run writes its own folder under easyllm-runs/
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 (the snippet is what a user would run)
    again = dict(namespace["runner"].model.named_parameters())
    trained = {name: p for name, p in runner.model.named_parameters() if "lora_" in name}
    assert trained and all(torch.equal(p, again[name]) for name, p in trained.items())


# -- wired into the runner ----------------------------------------------------------------------
def test_load_checks_that_chats_render_as_in_training(tiny_model_dir, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.save(tmp_path / "saved")
    info = json.loads((tmp_path / "saved" / "easyllm.json").read_text())
    assert info["template_fingerprint"] == template_fingerprint(runner.tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModelRunner.load(tmp_path / "saved", strict=True)
    with pytest.warns(TemplateDriftWarning, match="### Response"):
        ModelRunner.load(tmp_path / "saved", template="plain")
    with pytest.raises(ConfigError, match="renders chats differently"):
        ModelRunner.load(tmp_path / "saved", template="plain", strict=True)


def test_a_run_records_how_to_reproduce_it_and_export_checks_parity(
    tiny_model_dir, chats, tmp_path, capsys
):
    from easyllm.cli import main

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in chats))
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(str(data), val_size=2)
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    record = json.loads((tmp_path / "run" / REPRODUCE_FILE).read_text())
    assert record["data"]["source"] == str(data) and record["data"]["options"]["val_size"] == 2
    assert record["training_arguments"]["learning_rate"] == 1e-2
    assert (
        record["fingerprints"]
        == json.loads(
            (next((tmp_path / "run").glob("checkpoint-*")) / "easyllm-checkpoint.json").read_text()
        )["fingerprints"]
    )
    assert f"runner.load_data({str(data)!r}, val_size=2)" in record["reproduce"]

    capsys.readouterr()
    runner.merge(tmp_path / "merged")  # on the 2 held-out prompts
    assert "merge parity: 2 of 2 prompts give the same greedy tokens" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "run"), "--merge", str(tmp_path / "exported")]) == 0
    # a reloaded run: the probe prompts
    assert "merge parity: 4 of 4 prompts" in capsys.readouterr().out
    parity = json.loads((tmp_path / "exported" / PARITY_FILE).read_text())
    assert parity["ok"] and parity["max_logprob_drift"] < 1e-4
