"""runner.evaluate() on tiny models with known replies: metrics, runaways, compare mode, files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from easyllm import ModelRunner, UsageError
from easyllm.eval.evaluation import EVALUATION_FILE, EvalResult, Reference, default_max_new_tokens
from easyllm.tasks.sft import split_last_reply

REFERENCE = "I am Lumen, an AI assistant."  # every reply in the `chats` fixture
FAST = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "disable_tqdm": True}


@pytest.fixture
def runner(tiny_model_dir, chats) -> ModelRunner:
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=3)
    return runner


@contextmanager
def scripted(runner: ModelRunner, text: str | None) -> Iterator[list[int]]:
    """Make the model reply `text` and then end its turn; None: never end the turn (a runaway).

    A hook on the output layer overwrites the next-token logits; a hook on the model restarts the
    script at every new prompt (the one forward pass that reads more than one token).
    """
    end_of_turn = runner.encoder.end_of_turn_ids
    script = (
        runner.tokenizer(text, add_special_tokens=False)["input_ids"] if text is not None else []
    )
    step = [0]

    def restart(module, args, kwargs):
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[-1] > 1:
            step[0] = 0

    def force(module, inputs, logits):
        if text is None:
            logits[..., end_of_turn] = -math.inf
            return logits
        token = script[step[0]] if step[0] < len(script) else end_of_turn[0]
        logits[..., -1, :] = -math.inf
        logits[..., -1, token] = 0.0
        step[0] += 1
        return logits

    hooks = [
        runner.model.register_forward_pre_hook(restart, with_kwargs=True),
        runner.model.get_output_embeddings().register_forward_hook(force),
    ]
    try:
        yield script
    finally:
        for hook in hooks:
            hook.remove()


def test_a_model_that_answers_the_reference_scores_perfectly(runner):
    with scripted(runner, REFERENCE) as script:
        result = runner.evaluate()
    assert [sample.reply for sample in result.samples] == [REFERENCE] * 3
    assert (result["exact_match"], result["token_f1"], result["rouge_l"]) == (1.0, 1.0, 1.0)
    assert result["bleu"] == pytest.approx(100.0)
    assert result["runaway_rate"] == 0.0
    assert result["mean_reply_tokens"] == result["mean_reference_tokens"] == len(script)
    assert result["generated_replies"] == 3 and "eval_loss" in result and "perplexity" in result


def test_each_metric_of_a_partial_answer(runner):
    with scripted(runner, "I am Lumen, an AI") as script:
        result = runner.evaluate()
    assert result["exact_match"] == 0.0
    # SQuAD words [i, am, lumen, ai] of [i, am, lumen, ai, assistant] ("an", an article): P 1, R 4/5
    assert result["token_f1"] == pytest.approx(2 * (4 / 5) / (1 + 4 / 5))
    # ROUGE words [i, am, lumen, an, ai] of [i, am, lumen, an, ai, assistant]: P 1, R 5/6
    assert result["rouge_l"] == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    # 13a tokens: 6 of the reference's 8 ("," and "." are tokens); every n-gram is found, so only
    # the brevity penalty counts
    assert result["bleu"] == pytest.approx(100 * math.exp(1 - 8 / 6))
    assert result["mean_reply_tokens"] == len(script)
    assert result["mean_reference_tokens"] == len(
        runner.tokenizer(REFERENCE, add_special_tokens=False)["input_ids"]
    )


def test_runaway_rate_catches_a_model_that_never_ends_its_turn(runner):
    with scripted(runner, None):
        never = runner.evaluate(max_new_tokens=7)
    assert never["runaway_rate"] == 1.0 and never["mean_reply_tokens"] == 7
    assert {sample.finish_reason for sample in never.samples} == {"length"}
    with scripted(runner, ""):  # ends its turn at once
        at_once = runner.evaluate(max_new_tokens=7)
    assert at_once["runaway_rate"] == 0.0 and at_once["mean_reply_tokens"] == 0
    assert [sample.reply for sample in at_once.samples] == ["", "", ""]


def test_the_default_length_limit_leaves_room_for_long_references(runner):
    with scripted(runner, None):
        result = runner.evaluate(max_samples=1)
    assert result["mean_reply_tokens"] == 256 and result["runaway_rate"] == 1.0
    essay = Reference([{"role": "user", "content": "Write"}], "word " * 200)
    essay_tokens = len(runner.tokenizer(essay.reply, add_special_tokens=False)["input_ids"])
    assert (
        essay_tokens > 120
        and default_max_new_tokens([essay], runner.tokenizer) == 2 * essay_tokens + 16
    )


def test_max_samples_bounds_the_replies_but_not_the_loss(runner):
    result = runner.evaluate(max_samples=2, max_new_tokens=4)
    assert result["generated_replies"] == 2 and len(result.samples) == 2
    assert result["eval_examples"] == 3
    skipped = runner.evaluate(generate=False)
    assert "rouge_l" not in skipped and not skipped.samples and skipped["eval_examples"] == 3
    with pytest.raises(UsageError, match="max_samples=0"):
        runner.evaluate(max_samples=0)


def test_compare_answers_with_the_adapter_off_beside_the_trained_one(runner, tmp_path):
    before = runner.evaluate(max_new_tokens=12)
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    after = runner.evaluate(compare=True, max_new_tokens=12)
    replies = [sample.reply for sample in after.samples]
    base_replies = [sample.other_reply for sample in after.samples]
    # the base is the untrained model
    assert base_replies == [sample.reply for sample in before.samples]
    assert replies != base_replies
    assert after["base_eval_loss"] == pytest.approx(before["eval_loss"], rel=1e-5)
    assert after["eval_loss"] < after["base_eval_loss"]
    for name in ("exact_match", "token_f1", "rouge_l", "bleu", "runaway_rate", "mean_reply_tokens"):
        assert after[f"base_{name}"] == before[name], name
    # adapter back on
    assert [sample.reply for sample in runner.evaluate(max_new_tokens=12).samples] == replies
    assert (
        after.compared_with == "base (adapter off)"
        and after.compared()["eval_loss"] == after["base_eval_loss"]
    )


def test_compare_needs_an_adapter_or_another_runner(runner, tiny_model_dir):
    with pytest.raises(UsageError, match="has no adapter.*compare=ModelRunner"):
        runner.evaluate(compare=True)
    with pytest.raises(UsageError, match="pass True .* or another ModelRunner"):
        runner.evaluate(compare="base")
    with pytest.raises(UsageError, match="generate=False"):
        runner.evaluate(compare=ModelRunner(str(tiny_model_dir)), generate=False)


def test_compare_with_another_runner_puts_its_replies_beside(runner, tiny_model_dir):
    other = ModelRunner(str(tiny_model_dir))
    with scripted(runner, REFERENCE):
        result = runner.evaluate(compare=other, max_new_tokens=30)
    prompts = [sample.prompt for sample in result.samples]
    assert [sample.other_reply for sample in result.samples] == other.generate(
        prompts, max_new_tokens=30
    )
    assert result["exact_match"] == 1.0 and result["compare_exact_match"] == 0.0
    assert result.compared_with == str(tiny_model_dir) and "compare_eval_loss" not in result
    assert result.compared()["exact_match"] == 0.0 and result.own()["exact_match"] == 1.0


def test_passed_data_is_scored_on_its_last_reply(runner):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": REFERENCE},
    ]
    assert split_last_reply(chat) == (chat[:4], REFERENCE)
    with scripted(runner, REFERENCE):
        result = runner.evaluate([{"messages": chat}])
    assert result.samples[0].prompt == chat[:4] and result.samples[0].reference == REFERENCE
    assert result["exact_match"] == 1.0 and result["eval_examples"] == 1
    assert result.data == "data"


def test_train_and_a_reloaded_run_write_evaluation_json(runner, tmp_path):
    run = tmp_path / "run"
    trained = runner.train(output_dir=str(run), **FAST)
    written = json.loads((run / EVALUATION_FILE).read_text())
    assert written["metrics"]["eval_loss"] == pytest.approx(trained.metrics["eval_loss"])
    assert {"runaway_rate", "rouge_l"} <= set(trained.metrics)  # in metrics.json too
    assert (
        json.loads((run / "metrics.json").read_text())["rouge_l"] == written["metrics"]["rouge_l"]
    )
    assert len(written["samples"]) == 3 and written["samples"][0]["reference"] == REFERENCE
    reloaded = ModelRunner.load(run)
    again = reloaded.evaluate(
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                ]
            }
        ],
        max_new_tokens=4,
    )
    assert json.loads((run / EVALUATION_FILE).read_text()) == again.to_json()
    assert json.dumps(again) and again.to_json()["samples"][0]["reference"] == "Hello."


def test_other_tasks_keep_their_metrics_and_skip_generation(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="pt")
    runner.load_data(
        [{"text": "The quick brown fox jumps over the lazy dog. " * 8}] * 4, val_size=1
    )
    result = runner.evaluate()
    assert isinstance(result, EvalResult) and "perplexity" in result and "rouge_l" not in result
    with pytest.raises(UsageError, match="task 'pt' has no reference replies"):
        runner.evaluate(compare=ModelRunner(str(tiny_model_dir)))


def test_html_shows_both_models_and_the_replies(runner, tiny_model_dir):
    row = {
        "messages": [
            {"role": "user", "content": "<b>Who</b> are you?"},
            {"role": "assistant", "content": "Lumen"},
        ]
    }
    with scripted(runner, None):
        result = runner.evaluate([row], compare=ModelRunner(str(tiny_model_dir)), max_new_tokens=3)
    html = result._repr_html_()
    header = (
        f"<th style='text-align:left'>model</th><th style='text-align:left'>{tiny_model_dir}</th>"
    )
    assert header in html and "eval_loss" in html and "rouge_l" in html
    assert (
        "&lt;b&gt;Who&lt;/b&gt; are you?" in html
        and "<td style='text-align:left; white-space:pre-wrap'>Lumen</td>" in html
    )
    assert "cut off at max_new_tokens" in html  # the scripted model never ends its turn
