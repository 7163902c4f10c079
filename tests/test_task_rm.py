"""Task "rm": pairs in every shape, pairwise loss, accuracy and margin, score(), save and load."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from peft import PeftModel

import easyllm.tasks.rm  # noqa: F401  (registers "rm")
from easyllm import DataError, ModelRunner, UsageError
from easyllm.data.loading import read_source
from easyllm.tasks.base import DataOptions
from easyllm.tasks.rm import PairCollator, PairwiseRewardTrainer, score

FIXTURES = REPO / "tests" / "fixtures" / "tasks_pt_rm"
FAST = {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "disable_tqdm": True}


def _chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def learnable_pairs(count: int = 16) -> list[dict]:
    """Chosen replies name Paris, rejected ones talk about a fox: a tiny model learns that fast."""
    return [
        {
            "prompt": f"What is the capital of France? ({i})",
            "chosen": "The capital of France is Paris.",
            "rejected": "The quick brown fox jumps.",
        }
        for i in range(count)
    ]


def test_every_pair_shape_becomes_two_whole_conversations(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="rm")
    records = read_source(FIXTURES / "pairs.jsonl") + read_source(FIXTURES / "sharegpt_pairs.json")
    data = runner.task.prepare(records, runner.tokenizer, runner.encoder, DataOptions(val_size=0))
    render = lambda messages: runner.tokenizer.apply_chat_template(messages, tokenize=False)
    decoded = [
        (runner.tokenizer.decode(row["chosen_ids"]), runner.tokenizer.decode(row["rejected_ids"]))
        for row in data.train
    ]
    question = "What is the capital of France?"
    assert decoded[0] == (
        render(_chat(question, "The capital of France is Paris.")),
        render(_chat(question, "I do not know.")),
    )
    assert decoded[1][0] == render(
        [
            {"role": "system", "content": "Answer briefly."},
            *_chat("Who are you?", "I am Lumen, an AI assistant."),
        ]
    )
    assert decoded[2] == (render(_chat("Name?", "Lumen.")), render(_chat("Name?", "Fox.")))
    history = [
        {"role": "system", "content": "You are a helpful assistant."},
        *_chat("Who are you?", "I am Lumen."),
        {"role": "user", "content": question},
    ]
    assert decoded[4] == (
        render([*history, {"role": "assistant", "content": "Paris."}]),
        render([*history, {"role": "assistant", "content": "Rome."}]),
    )
    assert data.report.formats == {
        "prompt-chosen-rejected": 2,
        "chosen-rejected (implicit prompt)": 1,
        "sharegpt": 2,
    }
    assert all(
        row["length"] == len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in data.train
    )


def test_bad_pairs_are_named_by_file_and_line(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="rm")
    path = FIXTURES / "bad_pairs.jsonl"
    with pytest.raises(DataError) as error:
        runner.load_data(path)
    message = str(error.value)
    for line, words in [
        (2, "missing or null ['rejected']"),
        (3, "are the same reply"),
        (4, "'chosen': message 1 has unknown ShareGPT role 'robot'"),
        (5, "'chosen': message 2 (assistant) is empty"),
        (6, "not valid JSON"),
    ]:
        assert f"{path}:{line}: " in message and words in message, (line, message)
    assert f"{path}:1:" not in message
    report = runner.load_data(path, on_bad_rows="skip", val_size=0)
    assert report.train_examples == 1 and "skipped 5 of 6 rows" in report.rejected


def test_pairs_longer_than_max_length_are_skipped_and_reported(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="rm")
    report = runner.load_data(FIXTURES / "pairs.jsonl", val_size=0, max_length=50)
    assert report.train_examples == 1 and len(report.dropped) == 2
    assert "exceed max_length=50" in report.dropped[0] and "pairs.jsonl:1" in report.dropped[0]


def test_pair_collator_puts_chosen_first_and_the_loss_is_bradley_terry():
    batch = PairCollator(pad_token_id=0)(
        [
            {"chosen_ids": [5, 6, 7], "rejected_ids": [8]},
            {"chosen_ids": [9], "rejected_ids": [3, 4]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0], [8, 0, 0], [3, 4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 1, 0, 0]

    class Scores(torch.nn.Module):  # reward = first token id, so the loss is known exactly
        def forward(self, input_ids, attention_mask, use_cache):
            return type("Output", (), {"logits": input_ids[:, :1].float()})()

    loss = PairwiseRewardTrainer.compute_loss(None, Scores(), batch)
    expected = -F.logsigmoid(torch.tensor([5.0 - 8.0, 9.0 - 3.0])).mean()
    torch.testing.assert_close(loss, expected)


def test_rm_learns_to_prefer_chosen_and_reloads_the_same(tiny_model_dir, tmp_path):
    runner = ModelRunner(str(tiny_model_dir), task="rm")
    runner.load_data(learnable_pairs(), val_size=4)
    head_before = runner.model.score.weight.detach().clone()
    result = runner.train(output_dir=str(tmp_path / "run"), max_steps=4, **FAST)
    assert isinstance(runner.model, PeftModel)
    lora_b = [p for n, p in runner.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero
    head = [p for n, p in runner.model.named_parameters() if "score" in n and p.requires_grad]
    assert head and not torch.equal(head[0], head_before)  # the new head is fully trained
    assert result.metrics["accuracy"] == 1.0 and result.metrics["margin"] > 0
    # the Trainer's own evaluation ran
    assert any("eval_loss" in entry for entry in result.log_history)
    conversations = [
        _chat("What is the capital of France? (new)", "The capital of France is Paris."),
        _chat("What is the capital of France? (new)", "The quick brown fox jumps."),
    ]
    chosen, rejected = runner.score(conversations)
    assert chosen > rejected
    again = ModelRunner.load(tmp_path / "run")
    assert again.score(conversations) == pytest.approx([chosen, rejected], abs=1e-5)


def test_score_gives_one_float_per_item_and_explains_bad_input(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="rm")
    scores = score(
        runner.model, runner.tokenizer, runner.encoder, ["Paris.", _chat("Hi", "Hello!"), "Fox."], 2
    )
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    with pytest.raises(UsageError, match="takes a list"):
        score(runner.model, runner.tokenizer, runner.encoder, "Paris.", 2)
    with pytest.raises(DataError, match=r"texts\[1\]: .*must end with an assistant reply"):
        score(
            runner.model,
            runner.tokenizer,
            runner.encoder,
            ["ok", [{"role": "user", "content": "Hi"}]],
            2,
        )
    with pytest.raises(UsageError, match="generative"):
        runner.generate("Hi")


def test_other_column_names_map_to_prompt_chosen_rejected(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="rm")
    rows = [{"q": "Capital of France?", "good": "Paris.", "bad": "Rome."}] * 2
    report = runner.load_data(
        rows, val_size=0, columns={"prompt": "q", "chosen": "good", "rejected": "bad"}
    )
    assert report.train_examples == 2


@pytest.mark.slow
def test_reward_model_example_scores_the_polite_reply_higher(tmp_path):
    """Runs examples/reward_model.py on the real built-in model as a user would."""
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "reward_model.py")],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = re.search(r"polite reply (-?[\d.]+), rude reply (-?[\d.]+)", done.stdout)
    assert scores and float(scores[1]) > float(scores[2]), done.stdout[-2000:]
