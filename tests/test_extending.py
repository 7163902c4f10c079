"""A new method and a new task, each added from outside the package with one registration, train."""

from __future__ import annotations

import dataclasses
from collections import Counter

import torch
from datasets import Dataset

from easyllm import ModelRunner, register_task
from easyllm.data.formats import convert_rows
from easyllm.data.prepared import DataReport
from easyllm.data.truncation import Truncation
from easyllm.methods import METHODS, Method, register_method
from easyllm.tasks import Capabilities, causal
from easyllm.tasks.base import finish_prepared, split_rows

FAST = {
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "disable_tqdm": True,
    "learning_rate": 1e-2,
    "save_strategy": "no",
    "eval_strategy": "no",
}


def test_a_method_registered_here_trains_its_own_adapter(tiny_model_dir, chats, tmp_path):
    if "test-dora" not in METHODS:
        register_method(
            "test-dora", Method("test-dora", learning_rate=1e-3, adapter_options={"use_dora": True})
        )
    runner = ModelRunner(str(tiny_model_dir), method="test-dora")
    runner.load_data(chats, val_size=0)
    result = runner.train(output_dir=str(tmp_path / "run"), **FAST)
    parameters = dict(runner.model.named_parameters())
    magnitudes = [p for name, p in parameters.items() if "lora_magnitude_vector" in name]
    # the method's options reached peft: DoRA
    assert magnitudes and all(p.requires_grad for p in magnitudes)
    assert trained_away_from_zero(parameters)
    assert result.metrics["global_step"] == 3
    reloaded = ModelRunner.load(tmp_path / "run")
    assert (
        reloaded.settings.method == "test-dora"
        and reloaded.generate("Hi", max_new_tokens=4) is not None
    )


def trained_away_from_zero(parameters: dict[str, torch.Tensor]) -> bool:
    """LoRA's B matrices start at zero: every one is non-zero after training."""
    lora_b = [p for name, p in parameters.items() if "lora_B" in name]
    return bool(lora_b) and all(p.abs().sum() > 0 for p in lora_b)


class LastReplyTask:
    """Conversations in; only each conversation's last reply is trained (the docs' custom task)."""

    name = "test-last-reply"
    capabilities = Capabilities(previews=True, truncation=Truncation.OLDEST_TURNS)
    load_model = staticmethod(causal.load_model)
    build_trainer = staticmethod(causal.build_trainer)
    evaluate = staticmethod(causal.evaluate)
    preview_ids = staticmethod(causal.preview_ids)

    def prepare(self, records, tokenizer, encoder, options):
        parsed = convert_rows(records, on_bad_rows=options.on_bad_rows)
        report = DataReport.of(parsed, dict(Counter(c.format for c in parsed.rows)))
        encoder = dataclasses.replace(encoder, train_on="last_assistant")
        train_rows, val_rows = split_rows(parsed.rows, options)
        train = Dataset.from_list([vars(encoder.encode(c.messages)) for c in train_rows])
        validation = (
            Dataset.from_list([vars(encoder.encode(c.messages)) for c in val_rows])
            if val_rows
            else None
        )
        longest = max((len(ids) for ids in train["input_ids"]), default=0)
        return finish_prepared(
            train, validation, report, options, parsed.rejects, longest_example=longest
        )


def test_a_task_registered_here_trains_on_what_it_prepared(tiny_model_dir, tmp_path):
    register_task("test-last-reply", LastReplyTask(), replace=True)
    two_turns = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "first"},
                {"role": "user", "content": "and?"},
                {"role": "assistant", "content": f"last {i}"},
            ]
        }
        for i in range(8)
    ]
    runner = ModelRunner(str(tiny_model_dir), task="test-last-reply")
    report = runner.load_data(two_turns, val_size=2)
    assert report.train_examples == 6 and report.val_examples == 2
    shown = str(runner.preview(1))
    assert "[[last" in shown and "[[first" not in shown  # only the last reply is trained
    result = runner.train(output_dir=str(tmp_path / "run"), **FAST)
    assert trained_away_from_zero(dict(runner.model.named_parameters()))
    assert "eval_loss" in runner.evaluate(generate=False)
    assert result.metrics["global_step"] == 3
