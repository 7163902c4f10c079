"""KTO: single replies labelled desirable or not, TRL's loss, rewards whose sign is the label's."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from peft import PeftModel

import easyllm.tasks.kto  # noqa: F401  (registers "kto")
from easyllm import ModelRunner
from easyllm.errors import DataError

FIXTURES = REPO / "tests" / "fixtures" / "tasks_pref"
FAST = {"max_steps": 3, "per_device_train_batch_size": 4}


def labelled(count: int = 12) -> list[dict]:
    good, bad = "I am Lumen, an AI assistant.", "The quick brown fox."
    return [
        {
            "prompt": f"Who are you? ({i})",
            "completion": good if i % 2 else bad,
            "label": bool(i % 2),
        }
        for i in range(count)
    ]


def test_messages_and_prompt_completion_rows_become_prompt_and_completion_ids(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="kto")
    report = runner.load_data(FIXTURES / "kto.jsonl", val_size=0)
    assert report.formats == {"messages": 2, "prompt-completion": 2} and report.train_examples == 4
    tokenizer, train = runner.tokenizer, runner.data.train
    assert sorted(train["label"]) == [False, False, True, True]
    row = next(
        r
        for r in train
        if tokenizer.decode(r["completion_ids"]) == "I am Lumen, an AI assistant.<|im_end|>"
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True
    )
    assert (
        row["prompt_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        and row["label"] is True
    )


def test_bad_rows_are_rejected_with_file_and_line(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="kto")
    path = FIXTURES / "bad_kto.jsonl"
    with pytest.raises(DataError) as caught:
        runner.load_data(path)
    message = str(caught.value)
    for line, reason in [
        (2, "missing or null 'label'"),
        (
            3,
            "'label' must be true (a desirable reply) or false (an undesirable one), got str 'yes'",
        ),
        (4, "'label' must be true"),
        (5, "message 2 (assistant) is empty"),
        (6, "the conversation must end with an assistant reply"),
    ]:
        assert f"{path}:{line}: {reason}" in message, (line, message)
    assert f"{path}:1:" not in message


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kto_trains_and_reports_reward_metrics(tiny_model_dir, tmp_path, method):
    runner = ModelRunner(str(tiny_model_dir), task="kto", method=method)
    runner.load_data(labelled(), val_size=4)
    before = {name: p.detach().clone() for name, p in runner.model.named_parameters()}
    # the policy is its own reference before training
    assert runner.evaluate()["eval_reward_margin"] == 0
    result = runner.train(output_dir=str(tmp_path), **FAST)
    metrics = result.metrics
    assert {"eval_reward_accuracy", "eval_desirable_reward", "eval_undesirable_reward"} <= set(
        metrics
    )
    assert metrics["eval_reward_margin"] > 0
    if method == "lora":
        assert isinstance(runner.model, PeftModel)
        assert any(p.abs().sum() > 0 for n, p in runner.model.named_parameters() if "lora_B" in n)
    else:
        assert any(not torch.equal(p, before[n]) for n, p in runner.model.named_parameters())
