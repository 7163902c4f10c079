"""The facade on a tiny random model: train (LoRA, QLoRA, full), evaluate, generate, save, load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

from easyllm import ConfigError, ModelRunner, UsageError
from easyllm.data.collator import PaddingCollator

FAST = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "disable_tqdm": True}


@pytest.fixture
def runner(tiny_model_dir, chats) -> ModelRunner:
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=2)
    return runner


def test_pad_token_never_shares_the_end_of_turn_token(runner):
    assert runner.tokenizer.pad_token_id not in runner.encoder.end_of_turn_ids
    assert runner.model.config.pad_token_id == runner.tokenizer.pad_token_id


def test_lora_trains_only_adapter_weights_and_writes_the_run(runner, tmp_path, tiny_model_dir):
    base = {k: v.clone() for k, v in runner.model.state_dict().items()}
    result = runner.train(output_dir=str(tmp_path / "run"), **FAST)
    assert isinstance(runner.model, PeftModel)
    lora_b = {n: p for n, p in runner.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # lora_B starts at zero
    frozen = runner.model.get_base_model().state_dict()
    for name, before in base.items():
        key = (
            name.replace(".weight", ".base_layer.weight")
            if name.replace(".weight", ".base_layer.weight") in frozen
            else name
        )
        assert torch.equal(frozen[key], before), name
    run = tmp_path / "run"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "easyllm.json",
        "metrics.json",
        "loss.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_examples"] == 10 and "eval_loss" in metrics
    assert result.metrics["eval_loss"] == metrics["eval_loss"]
    assert not list(run.glob(".saving-*"))  # no staging folder left behind


def test_training_lowers_held_out_loss(runner, tmp_path):
    before = runner.evaluate()["eval_loss"]
    runner.train(output_dir=str(tmp_path), learning_rate=1e-2, **FAST)
    assert runner.evaluate()["eval_loss"] < before


def test_full_training_changes_every_weight_matrix(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir), method="full")
    runner.load_data(chats, val_size=0)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train(output_dir=str(tmp_path), learning_rate=1e-3, **FAST)
    after = runner.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == set(before)
    assert (tmp_path / "model.safetensors").is_file()


def test_qlora_trains_adapters_on_a_4bit_base(runner, tmp_path):
    import bitsandbytes as bnb

    runner.train(method="qlora", output_dir=str(tmp_path), **FAST)
    base = runner.model.get_base_model()
    assert base.is_loaded_in_4bit
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    lora_b = [p for n, p in runner.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert json.loads((tmp_path / "easyllm.json").read_text())["method"] == "qlora"


def test_save_and_load_round_trip_gives_the_same_greedy_answers(runner, tmp_path):
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    prompts = ["Who are you?", "What is the capital of France?"]
    expected = runner.generate(prompts, max_new_tokens=12)
    runner.save(tmp_path / "saved")
    reloaded = ModelRunner.load(tmp_path / "saved")
    assert isinstance(reloaded.model, PeftModel)
    assert reloaded.generate(prompts, max_new_tokens=12) == expected
    assert reloaded.tokenizer.chat_template == runner.tokenizer.chat_template


def test_generate_shapes(runner):
    one = runner.generate("Hi", max_new_tokens=4)
    many = runner.generate(["Hi", "Who are you? Answer briefly."], max_new_tokens=4)
    chat = runner.generate([{"role": "user", "content": "Hi"}], max_new_tokens=4)
    assert isinstance(one, str) and isinstance(chat, str)
    # left padding changes nothing
    assert isinstance(many, list) and len(many) == 2 and many[0] == one
    assert one == chat
    assert runner.generate([], max_new_tokens=4) == []


def test_reply_details_say_whether_a_reply_ended_or_was_cut_off(runner):
    end_of_turn = runner.encoder.end_of_turn_ids
    cut = runner.generate(
        ["Hi", "Who are you?"], max_new_tokens=3, return_details=True, suppress_tokens=end_of_turn
    )
    assert [(reply.finish_reason, reply.generated_tokens) for reply in cut] == [
        ("length", 3),
        ("length", 3),
    ]
    assert [reply.text for reply in cut] == runner.generate(
        ["Hi", "Who are you?"], max_new_tokens=3, suppress_tokens=end_of_turn
    )

    def end_the_turn_now(module, inputs, logits):
        logits[..., end_of_turn[0]] = logits.max() + 10.0
        return logits

    hook = runner.model.get_output_embeddings().register_forward_hook(end_the_turn_now)
    try:
        ended = runner.generate("Hi", max_new_tokens=5, return_details=True)
    finally:
        hook.remove()
    assert (ended.text, ended.finish_reason, ended.generated_tokens) == ("", "stop", 1)


def test_batched_generation_equals_one_batch(runner):
    prompts = ["Hi", "Who are you? Answer briefly.", "What is the capital of France?"]
    assert runner.generate(prompts, max_new_tokens=4, batch_size=1) == runner.generate(
        prompts, max_new_tokens=4
    )


def test_evaluate_on_passed_data_and_perplexity(runner, chats):
    metrics = runner.evaluate(chats[:3])
    assert metrics["eval_examples"] == 3 and metrics["eval_tokens"] > 0
    assert metrics["perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item())


def test_call_order_and_unknown_options_are_explained(tiny_model_dir, runner):
    fresh = ModelRunner(str(tiny_model_dir))
    with pytest.raises(UsageError, match=r"call runner.load_data\('file.jsonl'\) before train"):
        fresh.train()
    with pytest.raises(ConfigError, match=r"'learnig_rate' \(did you mean learning_rate"):
        runner.train(learnig_rate=1e-3)
    with pytest.raises(ConfigError, match="method='sgd': choose one of lora, qlora, full"):
        runner.train(method="sgd")


def test_truncation_never_keeps_an_example_with_nothing_trained(runner):
    long_prompt = {
        "messages": [
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "ok"},
        ]
    }
    short = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    }
    report = runner.load_data([long_prompt, short], val_size=0, max_length=64)
    assert report.train_examples == 1
    assert (
        len(report.dropped) == 1
        and "data[0]" in report.dropped[0]
        and "max_length=64" in report.dropped[0]
    )


def _adapter_gradients(runner: ModelRunner) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # same LoRA dropout masks each time
    runner.model.train()
    runner.model.zero_grad()
    batch = PaddingCollator(runner.tokenizer.pad_token_id)([runner.data.train[i] for i in range(4)])
    runner.model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in runner.model.named_parameters() if p.grad is not None}


def _qlora_runner(model_dir, chats, generate: bool) -> ModelRunner:
    from easyllm.methods import make_trainable

    runner = ModelRunner(str(model_dir), method="qlora")
    runner.load_data(chats, val_size=0)
    if generate:
        # eval-mode forward: bitsandbytes may repack weights
        runner.generate("Hi", max_new_tokens=2)
    torch.manual_seed(0)
    runner.model = make_trainable(runner.model, runner.settings)
    # non-zero B: every path carries gradient
    for name, parameter in runner.model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(std=0.1)
    if generate:
        # between training steps, as the Trainer's evaluation does
        runner.generate("Hi", max_new_tokens=2)
    return runner


def test_qlora_gradients_survive_generation_on_the_cpu(tiny_model_dir, chats):
    """bitsandbytes repacks 4-bit weights for CPU inference; backprop must still go through them."""
    reference = _adapter_gradients(_qlora_runner(tiny_model_dir, chats, generate=False))
    after_generation = _adapter_gradients(_qlora_runner(tiny_model_dir, chats, generate=True))
    assert reference.keys() == after_generation.keys() and len(reference) > 0
    for name in reference:
        torch.testing.assert_close(after_generation[name], reference[name], msg=name)


def test_push_to_hub_uploads_what_save_writes(runner, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            calls.append(
                ("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()))
            )

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = runner.push_to_hub("me/tiny", private=True, token="hf_secret")
    assert url == "https://huggingface.co/me/tiny"
    assert calls[0] == ("init", "hf_secret") and calls[1] == ("create_repo", "me/tiny", True)
    uploaded = calls[2][2]
    assert (
        "easyllm.json" in uploaded
        and "tokenizer.json" in uploaded
        and "chat_template.jinja" in uploaded
    )


def test_preview_marks_exactly_the_trained_text(runner):
    preview = runner.preview(n=2)
    assert len(preview.examples) == 2
    plain = preview.text()
    assert "[[I am Lumen, an AI assistant.<|im_end|>]]" in plain
    assert plain.split("--- example 2")[0].count("[[") == 1  # only the reply is trained
    assert "\033[1;32mI am Lumen" in preview.text(colour=True)
    assert "<mark" in preview._repr_html_() and "Who are you?" in preview._repr_html_()


def test_skipped_rows_are_counted_and_written_to_the_run_folder(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    bad = [{"prompt": "no reply"}, {"messages": [{"role": "user", "content": "a"}]}]
    report = runner.load_data(chats + bad, val_size=0, on_bad_rows="skip")
    assert report.rows == 14 and report.train_examples == 12
    assert "skipped 2 of 14 rows" in str(report)
    runner.train(output_dir=str(tmp_path), max_steps=1, disable_tqdm=True)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["origin"] for r in rejects] == ["data[12]", "data[13]"]
    assert rejects[0]["row"] == {"prompt": "no reply"} and rejects[1]["reason"]


def test_runner_says_which_template_and_why(tiny_model_dir, chats):
    runner = ModelRunner(str(tiny_model_dir))
    assert runner.template.reason.startswith("the tokenizer's own chat template")
    named = ModelRunner(str(tiny_model_dir), template="chatml")
    assert (
        named.template.name == "chatml" and "registered template 'chatml'" in named.template.reason
    )
    assert named.tokenizer.chat_template == named.template.source  # saved with the tokenizer
    report = named.load_data(chats, val_size=0)
    assert "template: chatml (registered template 'chatml'" in str(report)


def test_generation_drops_an_empty_reasoning_block():
    from easyllm.eval.generation import _EMPTY_THINK

    assert _EMPTY_THINK.sub("", "<think>\n\n</think>\n\nI am Lumen.") == "I am Lumen."
    assert _EMPTY_THINK.sub("", "<think>plan</think> ok") == "<think>plan</think> ok"


def test_stream_yields_the_same_text_as_generate(runner, tmp_path):
    runner.train(output_dir=str(tmp_path), learning_rate=1e-2, **FAST)  # so that it says something
    expected = runner.generate("Who are you?", max_new_tokens=8)
    pieces = list(runner.stream("Who are you?", max_new_tokens=8))
    assert expected and "".join(pieces).strip() == expected


def test_stop_strings_reach_generate_and_cut_the_reply(runner):
    from easyllm.eval.generation import _cut_at_stop, _generation_kwargs

    kwargs = _generation_kwargs(runner.encoder, 8, ["###"], {"temperature": 0.7})
    assert kwargs["stop_strings"] == ["###"] and kwargs["tokenizer"] is runner.tokenizer
    assert kwargs["do_sample"] is True  # a sampling option turns sampling on
    assert _generation_kwargs(runner.encoder, 8, None, {})["do_sample"] is False
    assert _cut_at_stop("Paris.### Next question", ["###"]) == "Paris."
    assert isinstance(runner.generate("Hi", max_new_tokens=4, stop=["###"]), str)


def test_merge_writes_plain_weights_that_answer_like_the_adapter(runner, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    runner.merge(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    batch = PaddingCollator(runner.tokenizer.pad_token_id)([runner.data.train[i] for i in range(2)])
    batch.pop("labels")
    runner.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, runner.model(**batch).logits, rtol=1e-4, atol=1e-4
        )
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template
        == runner.tokenizer.chat_template
    )


@pytest.fixture
def fake_hub(monkeypatch) -> dict[str, bytes]:
    """Stands in for huggingface_hub.HfApi; returns the files an upload would send, by name."""
    uploaded: dict[str, bytes] = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            uploaded.update(
                {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.is_file()}
            )

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    return uploaded


def test_model_card_describes_the_run_and_never_holds_the_token(runner, tmp_path, fake_hub, capsys):
    uploaded = fake_hub
    runner.train(output_dir=str(tmp_path / "run"), **FAST)
    secret = "hf_TopSecretToken1234567890"
    runner.push_to_hub("me/tiny-lumen", token=secret)
    card = uploaded["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["tags"] == ["easyllm", "sft", "lora"]
    # a local base is no hub id: the card names it by its folder's name, never by a local path
    assert "base_model" not in meta and f"from `{Path(runner._source).name}`" in card
    assert (
        "# me/tiny-lumen" in card
        and "| eval_loss |" in card
        and "ModelRunner.load('me/tiny-lumen')" in card
    )
    assert "`learning_rate`" in card or "`lora_r`: 16" in card
    assert all(secret.encode() not in content for content in uploaded.values())
    assert secret not in capsys.readouterr().out
    assert (tmp_path / "run" / "README.md").is_file()  # the run folder has the card too


def test_push_to_hub_merged_uploads_full_weights_and_the_card(runner, tmp_path, fake_hub):
    uploaded = fake_hub
    runner.train(output_dir=str(tmp_path / "run"), **FAST)
    runner.push_to_hub("me/tiny-merged", merge=True)
    assert "model.safetensors" in uploaded and "adapter_config.json" not in uploaded
    assert "library_name: transformers" in uploaded["README.md"].decode()
