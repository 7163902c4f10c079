"""A second load of the same data reads the encoded rows from disk instead of tokenizing again."""

from __future__ import annotations

import pytest

from easyllm import ModelRunner
from easyllm.data import encoded_cache
from easyllm.tasks import sft


def _load(tiny_model_dir, chats, **options):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0.25, **options)
    return runner


def _never_encode(*args, **kwargs):
    raise AssertionError("encoded again although the same data was encoded before")


def test_the_same_data_is_read_back_with_the_same_rows_and_report(
    tiny_model_dir, chats, monkeypatch
):
    chats[0]["messages"][1]["content"] = "a long reply " * 40  # truncated at max_length=48: counted
    first = _load(tiny_model_dir, chats, max_length=48)
    assert len(list(encoded_cache.cache_root().iterdir())) == 2  # train and validation
    monkeypatch.setattr(sft, "encode_conversations", _never_encode)
    second = _load(tiny_model_dir, chats, max_length=48)
    for split in ("train", "validation"):
        before, after = getattr(first.data, split), getattr(second.data, split)
        assert before.column_names == after.column_names and before.to_dict() == after.to_dict()
    assert str(first.data.report) == str(second.data.report)
    assert second.data.report.truncated == first.data.report.truncated >= 1


def test_other_data_or_options_are_encoded_anew(tiny_model_dir, chats, monkeypatch):
    _load(tiny_model_dir, chats)
    calls = []
    encode = sft.encode_conversations
    monkeypatch.setattr(sft, "encode_conversations", lambda *a: calls.append(1) or encode(*a))
    _load(tiny_model_dir, chats, max_length=200)
    _load(tiny_model_dir, chats, train_on="all")
    chats[3]["messages"][1]["content"] = "Something else."
    _load(tiny_model_dir, chats)
    # max_length and train_on: both splits encoded anew; the changed row: only the split holding it
    assert len(calls) == 5


def test_a_damaged_entry_is_encoded_again(tiny_model_dir, chats):
    first = _load(tiny_model_dir, chats)
    for entry in encoded_cache.cache_root().iterdir():
        (entry / "counts.json").write_text("{not json")
    second = _load(tiny_model_dir, chats)
    assert first.data.train.to_dict() == second.data.train.to_dict()


def test_an_entry_is_complete_or_absent(tiny_model_dir, chats, monkeypatch):
    from datasets import Dataset

    save = Dataset.save_to_disk

    def interrupted_save(self, path, *args, **kwargs):  # the rows are written, the counts are not
        save(self, path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Dataset, "save_to_disk", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        _load(tiny_model_dir, chats)
    assert list(encoded_cache.cache_root().iterdir()) == []  # the half-written entry is gone
    monkeypatch.setattr(Dataset, "save_to_disk", save)
    _load(tiny_model_dir, chats)
    assert len(list(encoded_cache.cache_root().iterdir())) == 2
