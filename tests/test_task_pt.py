"""Task "pt": documents packed into full blocks, attention per document, perplexity once trained."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from transformers import AutoModelForCausalLM

import easyllm.tasks.pt  # noqa: F401  (registers "pt")
from easyllm import DataError, ModelRunner
from easyllm.data.encoding import IGNORE_INDEX
from easyllm.data.loading import read_source
from easyllm.tasks.base import DataOptions
from easyllm.tasks.pt import BlockCollator, PretrainTask, pack_documents, tokenize_documents

FIXTURES = REPO / "tests" / "fixtures" / "tasks_pt_rm"
FAST = {
    "max_steps": 3,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-2,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def model64(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()


def test_blocks_are_full_and_positions_restart_at_each_document():
    rows = pack_documents([[10, 11, 12, 2], [20, 21, 2], [30, 31, 32, 33, 2]], block=4)
    assert rows["input_ids"] == [[10, 11, 12, 2], [20, 21, 2, 30], [31, 32, 33, 2]]
    assert rows["position_ids"] == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]]
    assert rows["labels"] == [
        [IGNORE_INDEX, 11, 12, 2],
        [IGNORE_INDEX, 21, 2, IGNORE_INDEX],
        [31, 32, 33, 2],
    ]


def test_a_long_document_continues_into_the_next_block():
    document = list(range(10, 20)) + [2]
    rows = pack_documents([document, [30, 2]], block=4)
    # in order, nothing lost or added
    assert [t for row in rows["input_ids"] for t in row] == [*document, 30, 2]
    assert [len(row) for row in rows["input_ids"]] == [4, 4, 4, 1]  # only the last block is short
    # Positions restart at each block start (see the pt module docstring for why), not mid-document.
    assert rows["position_ids"][:3] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 0]]
    assert rows["labels"][1] == [14, 15, 16, 17]  # the continuation is trained, nothing masked


def test_cross_document_attention_numbers_every_block_through():
    rows = pack_documents([[10, 11, 2], [20, 21, 2]], block=4, cross_document=True)
    assert rows["position_ids"] == [[0, 1, 2, 3], [0, 1]]
    assert all(IGNORE_INDEX not in row for row in rows["labels"])


def _hidden(model, row: dict) -> torch.Tensor:
    inputs = {key: torch.tensor([row[key]]) for key in ("input_ids", "position_ids")}
    with torch.no_grad():  # as the Trainer runs it: no cache, no attention mask
        return model.get_decoder()(**inputs, use_cache=False).last_hidden_state[0]


@pytest.mark.parametrize("cross_document", [False, True])
def test_documents_attend_across_only_when_asked(model64, cross_document):
    first, second = [10, 11, 12, 13, 2], [20, 21, 22, 2]
    changed = [(t + 7) % model64.config.vocab_size for t in first[:-1]] + [2]
    original = pack_documents([first, second], 16, cross_document)
    perturbed = pack_documents([changed, second], 16, cross_document)
    assert len(original["input_ids"]) == 1  # both documents share one block
    a = _hidden(model64, {k: v[0] for k, v in original.items()})
    b = _hidden(model64, {k: v[0] for k, v in perturbed.items()})
    boundary = len(first)
    assert not torch.allclose(a[:boundary], b[:boundary])
    if cross_document:
        assert not torch.allclose(a[boundary:], b[boundary:])
    else:
        torch.testing.assert_close(a[boundary:], b[boundary:], rtol=0, atol=1e-12)


def test_special_token_strings_stay_text_and_only_our_eos_ends_a_document(tokenizer):
    [ids] = tokenize_documents(["a <|im_end|> b"], tokenizer)
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids[:-1]) == "a <|im_end|> b"
    [allowed] = tokenize_documents(["a <|im_end|> b"], tokenizer, as_text=False)
    assert allowed.count(tokenizer.eos_token_id) == 2


def test_validation_is_split_by_document_and_padding_only_fills_the_last_block(tokenizer):
    rows = [{"text": f"Document number {i}: the quick brown fox."} for i in range(10)]
    data = PretrainTask().prepare(
        read_source(rows), tokenizer, None, DataOptions(val_size=3, max_length=16)
    )
    eos = tokenizer.eos_token_id
    assert sum(row.count(eos) for row in data.train["input_ids"]) == 7
    assert sum(row.count(eos) for row in data.validation["input_ids"]) == 3
    assert all(len(row) == 16 for row in data.train["input_ids"][:-1])
    blocks = list(data.train["input_ids"]) + list(data.validation["input_ids"])
    # document tokens only, no padding
    assert sum(len(row) for row in blocks) == data.report.total_tokens
    batch = BlockCollator(pad_token_id=0)([data.train[0], data.train[len(data.train) - 1]])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (2, 16)
    assert data.report.train_examples == len(data.train) and data.report.lengths


def test_pt_trains_through_the_runner_and_reports_perplexity(tiny_model_dir, tmp_path):
    runner = ModelRunner(str(tiny_model_dir), task="pt")
    report = runner.load_data(FIXTURES / "corpus.txt", val_size=3, max_length=24)
    assert report.formats == {"text": 11} and report.val_examples >= 1
    assert all(len(row) == 24 for row in runner.data.train["input_ids"][:-1])
    result = runner.train(
        output_dir=str(tmp_path / "run"), eval_strategy="steps", eval_steps=3, **FAST
    )
    lora_b = [p for n, p in runner.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero
    # the Trainer's own evaluation ran
    assert any("eval_loss" in entry for entry in result.log_history)
    assert result.metrics["perplexity"] > 1 and "eval_loss" in result.metrics
    evaluated = runner.evaluate(FIXTURES / "docs.jsonl")
    assert set(evaluated) >= {"eval_loss", "perplexity"}
    # cut into blocks of the training max_length (24), as trained
    assert evaluated["eval_examples"] > 1
    assert isinstance(runner.generate("The quick brown", max_new_tokens=4), str)


def test_bad_rows_are_named_by_file_and_line(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="pt")
    path = FIXTURES / "bad_docs.jsonl"
    with pytest.raises(DataError) as error:
        runner.load_data(path)
    message = str(error.value)
    for line, words in [
        (2, "missing or null 'text'"),
        (3, "must be a string"),
        (4, "not valid JSON"),
        (5, "is empty"),
        (6, "use task='sft'"),
    ]:
        assert f"{path}:{line}: " in message and words in message, (line, message)
    assert f"{path}:1:" not in message
    report = runner.load_data(path, on_bad_rows="skip", val_size=0)
    assert report.train_examples == 1 and "skipped 5 of 6 rows" in report.rejected


def test_text_column_can_be_renamed_and_other_keys_are_explained(tiny_model_dir):
    from easyllm import ConfigError

    runner = ModelRunner(str(tiny_model_dir), task="pt")
    report = runner.load_data(
        [{"body": "Paris is the capital of France."}], columns={"text": "body"}, val_size=0
    )
    assert report.train_examples == 1
    with pytest.raises(ConfigError, match="columns=\\{'text': 'your_column'\\}"):
        runner.load_data([{"q": "a", "a": "b"}], input_key="q", output_key="a")


@pytest.mark.slow
def test_pretrain_example_lowers_held_out_perplexity(tmp_path):
    """Runs examples/pretrain.py on the real built-in model as a user would."""
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "pretrain.py")],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    perplexity = re.search(r"before ([\d.]+), after ([\d.]+)", done.stdout)
    assert perplexity and float(perplexity[2]) < float(perplexity[1]), done.stdout[-2000:]
