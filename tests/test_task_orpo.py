"""ORPO: DPO's pairs without a reference model, on TRL's experimental ORPOTrainer."""

from __future__ import annotations

import pytest
from conftest import REPO
from peft import PeftModel

import easyllm.tasks.orpo  # noqa: F401  (registers "orpo")
from easyllm import ModelRunner
from easyllm.data.encoding import IGNORE_INDEX
from easyllm.errors import DataError
from easyllm.tasks.orpo import _from_ids

FIXTURES = REPO / "tests" / "fixtures" / "tasks_pref"


def test_orpo_columns_mask_the_prompt_out_of_the_labels():
    row = _from_ids(None, {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]})
    assert row["chosen_input_ids"] == [1, 2, 3, 4]
    assert row["chosen_labels"] == [IGNORE_INDEX] * 2 + [3, 4]
    assert row["rejected_input_ids"] == [1, 2, 5] and row["rejected_attention_mask"] == [1, 1, 1]
    assert row["prompt_input_ids"] == [1, 2]


def test_orpo_trains_lora_and_reports_its_metrics(tiny_model_dir, tmp_path):
    runner = ModelRunner(str(tiny_model_dir), task="orpo")
    rows = [
        {
            "prompt": f"Who are you? ({i})",
            "chosen": "I am Lumen, an AI assistant.",
            "rejected": "The quick brown fox.",
        }
        for i in range(12)
    ]
    runner.load_data(rows, val_size=4)
    before = runner.evaluate()
    result = runner.train(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4)
    after = result.metrics
    assert isinstance(runner.model, PeftModel)
    assert any(p.abs().sum() > 0 for n, p in runner.model.named_parameters() if "lora_B" in n)
    assert {"eval_reward_accuracy", "eval_log_odds_chosen", "eval_chosen_nll"} <= set(after)
    assert after["eval_reward_margin"] > before["eval_reward_margin"]  # the chosen replies gained
    assert after["eval_chosen_nll"] < before["eval_chosen_nll"]


def test_orpo_reads_pairs_like_dpo_and_rejects_bad_ones(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="orpo")
    assert runner.load_data(FIXTURES / "sharegpt_pairs.json", val_size=0).formats == {"sharegpt": 2}
    with pytest.raises(DataError, match=r"bad_pairs.jsonl:2: missing or null \['rejected'\]"):
        runner.load_data(FIXTURES / "bad_pairs.jsonl")
