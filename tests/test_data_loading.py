"""Every supported row shape and source loads into the same conversation schema; bad rows are named.

The .parquet fixtures were written with `pyarrow.parquet.write_table(pa.Table.from_pylist(rows))`;
their rows are spelled out in `test_parquet_rows_are_named_by_row_index` and the parquet test below.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from easyllm.data.formats import (
    column_format,
    convert_rows,
    iter_conversations,
    key_format,
    to_conversations,
)
from easyllm.data.loading import describe_source, iter_records, other_splits, read_source
from easyllm.data.rows import write_rejects
from easyllm.data.split import train_val_split
from easyllm.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"


def conversations(name: str, **kwargs):
    return to_conversations(read_source(FIXTURES / name), **kwargs)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


# -- row shapes ----------------------------------------------------------------------------------
def test_alpaca_joins_instruction_and_input_and_keeps_system():
    first, second = conversations("alpaca.jsonl")
    assert first.format == "alpaca"
    assert first.messages == [user("Translate to French.\n\nGood morning"), assistant("Bonjour")]
    assert second.messages == [
        system("Answer in one word."),
        user("Name a primary colour."),
        assistant("Red."),
    ]


def test_alpaca_history_comes_before_the_instruction():
    (conversation,) = conversations("alpaca_history.jsonl")
    assert conversation.messages == [
        system("You translate."),
        user("Say 'good morning' in French."),
        assistant("Bonjour."),
        user("And in Spanish?"),
        assistant("Buenos días."),
        user("And in German?"),
        assistant("Guten Morgen."),
    ]


def test_sharegpt_roles_tools_and_function_calls():
    plain, weather, add = conversations("sharegpt.jsonl")
    assert plain.format == "sharegpt" and plain.tools is None
    assert plain.messages == [system("Be brief."), user("Hi"), assistant("Hello!")]
    assert [m["role"] for m in weather.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert weather.messages[0] == system("You can call tools.")
    assert json.loads(weather.messages[2]["content"]) == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert weather.messages[3] == {"role": "tool", "content": '{"temp_c": 18}'}
    assert [tool["name"] for tool in weather.tools] == ["get_weather"]  # parsed from a JSON string
    assert add.tools[0]["name"] == "add"  # given as a list
    assert json.loads(add.messages[1]["content"]) == {"name": "add", "arguments": {"a": 2, "b": 3}}


def test_messages_keep_turns_and_join_text_parts():
    multi, parts = conversations("messages.jsonl")
    assert [m["role"] for m in multi.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert parts.messages[0] == user("Two parts")


def test_messages_with_tool_role_keep_the_tools_list():
    (conversation,) = conversations("messages_tools.jsonl")
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "tool", "assistant"]
    assert conversation.tools[0]["function"]["name"] == "now"


def test_prompt_and_completion_may_be_message_lists():
    chat, mixed = conversations("prompt_completion_messages.jsonl")
    # a reply inside the prompt is context, not trained
    assert chat.messages == [
        system("Be brief."),
        user("Hi"),
        {**assistant("Hello!"), "train": False},
        user("Name?"),
        assistant("Lumen."),
    ]
    assert mixed.messages == [system("Answer with a number."), user("2 + 2 ="), assistant("4")]


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
    assert conversation.messages == [user(prompt), assistant(reply)]


def test_custom_keys_like_lamini():
    (conversation,) = conversations("custom_keys.jsonl", row_format=key_format("query", "reply"))
    assert conversation.messages[-1] == assistant("Pong.")


def test_column_mapping_reads_other_column_names():
    fmt = column_format({"prompt": "q", "completion": "a", "system": "sys"})
    first, second = conversations("columns.jsonl", row_format=fmt)
    assert first.messages == [
        system("Answer in one word."),
        user("Capital of Italy?"),
        assistant("Rome."),
    ]
    assert second.messages == [user("Capital of Spain?"), assistant("Madrid.")]
    assert first.format == "prompt-completion (prompt=q, completion=a, system=sys)"
    alpaca = column_format({"instruction": "task", "output": "answer", "history": "past"})
    row = {"task": "And 3 + 3?", "answer": "6", "past": [["1 + 1?", "2"]]}
    (conversation,) = to_conversations(read_source([row]), alpaca)
    assert conversation.messages == [
        user("1 + 1?"),
        assistant("2"),
        user("And 3 + 3?"),
        assistant("6"),
    ]


def test_column_mapping_that_names_no_shape_lists_the_shapes():
    with pytest.raises(
        ConfigError, match=r"prompt-completion: prompt \+ completion \[system, tools\]"
    ):
        column_format({"promt": "q", "completion": "a"})


# -- file types and sources ----------------------------------------------------------------------
def test_json_array_list_and_dataset_sources_agree():
    from_file = [c.messages for c in to_conversations(read_source(FIXTURES / "rows.json"))]
    rows = [
        {"question": "Is water wet?", "answer": "Yes."},
        {"prompt": "Say yes", "completion": "Yes"},
    ]
    from_list = [c.messages for c in to_conversations(read_source(rows))]
    columns = ["question", "answer", "prompt", "completion"]
    # with None where a row lacks the column
    dataset = Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
    from_dataset = [c.messages for c in to_conversations(read_source(dataset))]
    assert from_file == from_list == from_dataset


@pytest.mark.parametrize(
    ("name", "origins"),
    [
        ("json_keyed.json", ['["data"][0]', '["data"][1]']),
        ("json_by_id.json", ['["q1"]', '["q2"]']),
    ],
)
def test_json_objects_holding_rows(name, origins):
    records = read_source(FIXTURES / name)
    assert [r.origin for r in records] == [f"{FIXTURES / name}{suffix}" for suffix in origins]
    assert [c.messages for c in to_conversations(records)] == [
        c.messages for c in conversations("rows.json")
    ]


def test_csv_rows_are_named_by_line_with_the_header_as_line_1():
    path = FIXTURES / "rows.csv"
    records = read_source(path)
    assert [r.origin for r in records] == [f"{path}:2", f"{path}:3", f"{path}:6"]  # 3-4: one row
    first, multiline, last = to_conversations(records)
    assert first.messages == [user("Hello, who are you?"), assistant("I am Lumen.")]  # "" system
    assert multiline.messages == [
        system("Be brief."),
        user("Line one\nline two"),
        assistant("Two lines."),
    ]
    assert last.messages == [user("Last one"), assistant("Done.")]


def test_parquet_rows_are_named_by_row_index():
    path = FIXTURES / "rows.parquet"
    records = read_source(path)
    assert [r.origin for r in records] == [f"{path}[row 0]", f"{path}[row 1]"]
    first, second = to_conversations(records)
    assert first.messages == [user("Hi"), assistant("Hello!")]
    assert second.messages == [system("Be brief."), user("Name?"), assistant("Lumen.")]


def test_txt_gives_one_text_row_per_line_and_sft_points_to_pretraining():
    path = FIXTURES / "plain.txt"
    records = read_source(path)
    assert [(r.row, r.origin) for r in records] == [
        ({"text": "The first line of plain text."}, f"{path}:1"),
        ({"text": "The second line, after a blank one."}, f"{path}:3"),
    ]
    with pytest.raises(DataError, match=rf'{path}:1: .*SFT needs prompt/reply pairs.*task="pt"'):
        to_conversations(records)


def test_folder_reads_supported_files_in_name_order_and_keeps_their_names():
    folder = FIXTURES / "folder"
    records = read_source(folder)
    assert [r.origin for r in records] == [f"{folder / 'a.jsonl'}:1", f"{folder / 'b.csv'}:2"]
    assert [c.messages[0]["content"] for c in to_conversations(records)] == [
        "From jsonl",
        "From csv",
    ]
    assert (
        describe_source(folder)
        == f"{folder}/ (2 file(s): a.jsonl, b.csv; ignored README.md (unsupported))"
    )


def test_dataset_dict_reads_train_and_exposes_the_other_splits():
    rows = [{"prompt": "a", "completion": "b"}]
    splits = DatasetDict(
        {"train": Dataset.from_list(rows * 2), "validation": Dataset.from_list(rows)}
    )
    records = read_source(splits)
    assert [r.origin for r in records] == ['dataset["train"][0]', 'dataset["train"][1]']
    assert list(other_splits(splits)) == ["validation"]
    assert describe_source(splits) == (
        "the 'train' split of a DatasetDict (2 rows; not read: validation (1 rows))"
    )
    with pytest.raises(
        DataError, match=r"no 'train'; pass the one to train on, e.g. dataset_dict\['test'\]"
    ):
        read_source(DatasetDict({"test": Dataset.from_list(rows)}))


def test_origins_name_file_and_line():
    records = read_source(FIXTURES / "alpaca.jsonl")
    assert [r.origin for r in records] == [
        f"{FIXTURES / 'alpaca.jsonl'}:1",
        f"{FIXTURES / 'alpaca.jsonl'}:2",
    ]


def test_missing_empty_and_unsupported_sources(tmp_path):
    with pytest.raises(DataError, match="Data file not found"):
        read_source(tmp_path / "nope.jsonl")
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(
        DataError, match=r"unsupported file type '\.xml'. Supported: \.jsonl, \.json, \.csv"
    ):
        read_source(tmp_path / "data.xml")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: holds no rows"):
        read_source(tmp_path / "empty.jsonl")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("# notes")
    with pytest.raises(
        DataError, match=r"docs: no \.jsonl / \.json .* file in this folder \(found: notes.md\)"
    ):
        read_source(tmp_path / "docs")
    with pytest.raises(DataError, match="Cannot read training data from a dict"):
        read_source({"prompt": "a"})


def test_json_that_holds_no_rows_or_is_broken_is_explained(tmp_path):
    (tmp_path / "one.json").write_text('{"prompt": "a", "completion": "b"}')
    with pytest.raises(
        DataError, match="expected a JSON array of rows.*keys \\['completion', 'prompt'\\]"
    ):
        read_source(tmp_path / "one.json")
    (tmp_path / "lines.json").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"lines\.json:2: not valid JSON.*name the file \.jsonl"):
        read_source(tmp_path / "lines.json")


# -- bad rows: every message names file:line and the fix ------------------------------------------
BAD_ROWS = FIXTURES / "bad_rows.jsonl"
BAD_CASES = [
    (1, "roles out of order: message 2 (user) follows another user message; merge"),
    (2, "roles out of order: message 3 (assistant) follows another assistant message; merge"),
    (3, "must end with an assistant reply to learn from, but message 1 is a user message; add"),
    (4, "message 1 has unknown role 'wizard'; use one of system, user, assistant, tool"),
    (5, "message 1 needs 'role' and 'content', got {'role': 'user'}; add them"),
    (6, "message 2 (assistant) is empty; write its text or drop the row"),
    (7, "message 1 (user) has a non-text part {'type': 'image_url'"),
    (8, "message 2 (assistant) content must be text, got int; convert it"),
    (9, "'messages' must be a list of {role, content} objects, got str"),
    (10, "a row must be an object with named fields, got list"),
    (
        11,
        (
            "SFT needs prompt/reply pairs such as prompt/completion or messages; to train on plain "
            'text use task="pt"'
        ),
    ),
    (12, "unrecognized row with keys ['colour']. Known shapes: messages ['messages']; sharegpt"),
    (13, "message 1 has unknown ShareGPT role 'bot'; use one of human, gpt, system"),
    (14, "roles out of order: message 2 (tool) follows a user message; a tool result must follow"),
    (15, "roles out of order: message 2 (system) follows a user message; only the first message"),
    (16, "history entry 1 must be a [user, assistant] pair"),
    (17, "'tools' must be a list of tool definitions"),
    (19, "not valid JSON ("),  # the parser's own words differ between json and orjson
]


@pytest.mark.parametrize(("line", "expected"), BAD_CASES)
def test_each_bad_row_names_file_line_and_fix(line, expected):
    (record,) = [r for r in read_source(BAD_ROWS) if r.origin == f"{BAD_ROWS}:{line}"]
    with pytest.raises(DataError) as caught:
        to_conversations([record])
    assert f"{BAD_ROWS}:{line}: " in str(caught.value)
    assert expected in str(caught.value)
    assert "on_bad_rows='skip'" in str(caught.value)


def test_raise_lists_the_first_problems_and_counts_the_rest():
    with pytest.raises(DataError) as caught:
        to_conversations(iter_records(BAD_ROWS))
    message = str(caught.value)
    assert message.startswith(f"18 problem(s) in the data from {BAD_ROWS}:")
    assert f"{BAD_ROWS}:10: " in message and f"{BAD_ROWS}:11: " not in message
    assert "... and 8 more problem(s)" in message


def test_skip_returns_good_rows_and_rejects_with_reasons(tmp_path):
    result = convert_rows(iter_records(BAD_ROWS), on_bad_rows="skip")
    assert [c.origin for c in result.rows] == [f"{BAD_ROWS}:18"]
    first_reason = (
        "roles out of order: message 2 (user) follows another user message; merge the two user "
        "messages or put the assistant reply between them"
    )
    assert [(r.origin, r.reason) for r in result.rejects][:1] == [(f"{BAD_ROWS}:1", first_reason)]
    assert [int(r.origin.rsplit(":", 1)[1]) for r in result.rejects] == [
        line for line, _ in BAD_CASES
    ]
    for reject, (_, expected) in zip(result.rejects, BAD_CASES):
        assert expected in reject.reason
    assert result.rejects[-1].row == '{"prompt": "broken"'  # the raw line, to fix by hand
    assert result.rejects[9].row == ["not", "an", "object"]
    assert result.summary().startswith(
        "skipped 18 of 19 rows: 4 roles out of order, 4 wrong type, "
    )
    written = write_rejects(result.rejects, tmp_path / "rejects.jsonl").read_text().splitlines()
    assert json.loads(written[0]) == {
        "origin": f"{BAD_ROWS}:1",
        "reason": result.rejects[0].reason,
        "row": json.loads(BAD_ROWS.read_text().splitlines()[0]),
    }
    assert len(written) == 18


def test_unknown_bad_row_policy_is_refused():
    with pytest.raises(ConfigError, match="on_bad_rows='drop': choose 'raise' or 'skip'"):
        convert_rows([], on_bad_rows="drop")


def test_bad_csv_and_parquet_rows_are_named():
    csv_rejects = convert_rows(iter_records(FIXTURES / "bad.csv"), on_bad_rows="skip").rejects
    assert [(r.origin, r.reason[:40]) for r in csv_rejects] == [
        (f"{FIXTURES / 'bad.csv'}:3", "has 3 fields but the header has 2 (promp"),
        (f"{FIXTURES / 'bad.csv'}:4", "message 2 (assistant) is empty; write it"),
    ]
    with pytest.raises(
        DataError, match=r"bad_rows\.parquet\[row 1\]: message 2 \(assistant\) is empty"
    ):
        to_conversations(read_source(FIXTURES / "bad_rows.parquet"))


def test_missing_mapped_column_is_named():
    with pytest.raises(
        DataError, match=r"custom_keys\.jsonl:1: missing or null column\(s\) \['answer'\]"
    ):
        conversations("custom_keys.jsonl", row_format=key_format("query", "answer"))


# -- scale: rows stream --------------------------------------------------------------------------
def test_rows_stream_without_holding_the_file(tmp_path):
    path = tmp_path / "big.jsonl"
    row = json.dumps({"prompt": "question " * 10, "completion": "answer " * 10})
    path.write_text((row + "\n") * 5000)
    records = iter_records(path)
    assert isinstance(records, Iterator)
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_conversations(records))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 5000
    assert peak < 1_000_000  # the 5000 rows as Python objects take several MB


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


def test_a_messages_row_keeps_its_row_level_system_prompt():
    row = {"system": "Answer in one word.", "messages": [user("Hi"), assistant("Hello")]}
    (conversation,) = to_conversations(read_source([row]))
    assert conversation.messages == [system("Answer in one word."), user("Hi"), assistant("Hello")]
    # a system message already in the list is not doubled
    given = {"system": "Ignored.", "messages": [system("Be kind."), user("Hi"), assistant("Yo")]}
    (conversation,) = to_conversations(read_source([given]))
    assert [m["content"] for m in conversation.messages] == ["Be kind.", "Hi", "Yo"]


def test_the_data_report_names_every_file_of_a_folder_and_what_was_ignored(tiny_model_dir):
    from easyllm import ModelRunner

    report = ModelRunner(str(tiny_model_dir)).load_data(FIXTURES / "folder", val_size=0)
    assert "2 file(s): a.jsonl, b.csv; ignored README.md (unsupported)" in str(report)
