"""Every supported row shape and source loads into the same conversation schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

from easyllm.data.formats import key_format, to_conversations
from easyllm.data.loading import read_source
from easyllm.data.split import train_val_split
from easyllm.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"


def conversations(name: str, **kwargs):
    return to_conversations(read_source(FIXTURES / name), **kwargs)


def test_alpaca_joins_instruction_and_input_and_keeps_system():
    first, second = conversations("alpaca.jsonl")
    assert first.format == "alpaca"
    assert first.messages == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    assert second.messages == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red."},
    ]


def test_messages_keep_turns_and_join_text_parts():
    multi, parts = conversations("messages.jsonl")
    assert [m["role"] for m in multi.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert parts.messages[0] == {"role": "user", "content": "Two parts"}


@pytest.mark.parametrize(
    ("name", "shape", "prompt", "reply"),
    [
        ("prompt_completion.jsonl", "prompt-completion", "2 + 2 =", "4"),
        ("question_answer.jsonl", "question-answer", "What is the capital of France?", "Paris."),
        ("input_output.jsonl", "input-output", "Say hi", "Hi!"),
    ],
)
def test_single_turn_shapes(name, shape, prompt, reply):
    (conversation,) = conversations(name)
    assert conversation.format == shape
    assert conversation.messages == [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def test_custom_keys_like_lamini():
    (conversation,) = conversations("custom_keys.jsonl", row_format=key_format("query", "reply"))
    assert conversation.messages[-1] == {"role": "assistant", "content": "Pong."}


def test_json_array_list_and_dataset_sources_agree():
    from_file = [c.messages for c in to_conversations(read_source(FIXTURES / "rows.json"))]
    rows = [{"question": "Is water wet?", "answer": "Yes."}, {"prompt": "Say yes", "completion": "Yes"}]
    from_list = [c.messages for c in to_conversations(read_source(rows))]
    from_dataset = [c.messages for c in to_conversations(read_source(Dataset.from_list(rows[:1])))]
    assert from_file == from_list
    assert from_dataset == from_list[:1]


def test_origins_name_file_and_line():
    records = read_source(FIXTURES / "alpaca.jsonl")
    assert [r.origin for r in records] == [f"{FIXTURES / 'alpaca.jsonl'}:1", f"{FIXTURES / 'alpaca.jsonl'}:2"]


def test_bad_rows_are_all_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = (FIXTURES / "bad_rows.jsonl").read_text().splitlines()
    bad.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # drop the unparseable line
    with pytest.raises(DataError) as caught:
        to_conversations(read_source(bad))
    message = str(caught.value)
    assert "5 problem(s)" not in message  # line 1 is fine
    assert f"{bad}:2: " in message and "must end with an assistant reply" in message
    assert f"{bad}:3: " in message and "unknown role 'wizard'" in message
    assert f"{bad}:4: " in message and "is empty" in message
    assert f"{bad}:5: " in message and "unrecognized row with keys ['colour']" in message
    assert "input_key=" in message  # the fix for unknown column names


def test_unparseable_line_names_file_and_line():
    with pytest.raises(DataError, match=r"bad_rows\.jsonl:2: not valid JSON"):
        read_source(FIXTURES / "bad_rows.jsonl")


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match="Data file not found"):
        read_source(tmp_path / "nope.jsonl")
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(DataError, match=r"unsupported file type '\.xml'. Supported: \.jsonl, \.json"):
        read_source(tmp_path / "data.xml")


def test_json_object_instead_of_array_is_explained(tmp_path):
    (tmp_path / "one.json").write_text('{"prompt": "a", "completion": "b"}')
    with pytest.raises(DataError, match="expected a JSON array of rows"):
        read_source(tmp_path / "one.json")


def test_split_is_deterministic_and_disjoint():
    items = list(range(50))
    train, val = train_val_split(items, 0.1, seed=7)
    assert (train, val) == train_val_split(items, 0.1, seed=7)
    assert len(val) == 5 and sorted(train + val) == items
    assert train_val_split(items, 0.1, seed=8)[1] != val
    assert train_val_split(items, 3, seed=7)[1].__len__() == 3
    assert train_val_split([1], 0.5, seed=0) == ([1], [])
    with pytest.raises(ConfigError):
        train_val_split(items, 1.0, seed=0)
