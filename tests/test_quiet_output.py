"""A run prints easyllm's own lines and the training bar, not other libraries' noise.

- Storing encoded rows in the cache shows no "Saving the dataset" bar, and leaves datasets'
  progress-bar setting as the user had it (on stays on, off stays off).
- Training raises no FutureWarning about transformers' renamed checkpointing arguments, and a
  user's `gradient_checkpointing=...` (the old name) still decides.
"""

from __future__ import annotations

import warnings

import datasets.config
import pytest
from datasets import Dataset
from datasets.utils.tqdm import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)
from transformers import LlamaConfig

from easyllm import ModelRunner
from easyllm.data import encoded_cache

bars_env_set = pytest.mark.skipif(
    datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None,
    reason="HF_DATASETS_DISABLE_PROGRESS_BARS decides datasets' bars here",
)


def _store(key: str) -> None:
    columns = {"input_ids": [[1, 2, 3]] * 5, "labels": [[-100, 2, 3]] * 5}
    encoded_cache.cached_encoding(key, lambda: (columns, {"rows": 5}))
    assert (encoded_cache.cache_root() / key / "rows").is_dir()


@bars_env_set
def test_storing_the_cache_shows_no_bar_and_leaves_bars_on(capfd, tmp_path):
    assert not are_progress_bars_disabled()
    _store("quiet-on")
    assert "Saving the dataset" not in capfd.readouterr().err
    assert not are_progress_bars_disabled()
    # the user's own saves
    Dataset.from_dict({"x": [1, 2]}).save_to_disk(str(tmp_path / "users-own"))
    assert "Saving the dataset" in capfd.readouterr().err


@bars_env_set
def test_bars_the_user_turned_off_stay_off(capfd):
    disable_progress_bars()
    try:
        _store("quiet-off")
        assert are_progress_bars_disabled()
    finally:
        enable_progress_bars()
    assert "Saving the dataset" not in capfd.readouterr().err


def _checkpointing_warnings(caught) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, FutureWarning) and "checkpointing" in str(w.message)
    ]


def test_training_raises_no_checkpointing_future_warnings(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.train(
            num_train_epochs=1,
            per_device_train_batch_size=4,
            disable_tqdm=True,
            output_dir=str(tmp_path / "run"),
        )
    assert _checkpointing_warnings(caught) == []


@pytest.mark.parametrize(("free_memory", "forced"), [(1, False), (1 << 50, True)])
def test_the_old_checkpointing_name_still_decides(monkeypatch, tmp_path, free_memory, forced):
    """easyllm's own choice goes under transformers' current name; a user's value under the old
    name must still beat it (transformers ignores an old name when the new one is set)."""
    from easyllm.train.settings import TrainSettings

    monkeypatch.setattr("easyllm.train.resources.free_memory_bytes", lambda device: free_memory)
    model = LlamaConfig(hidden_size=576, num_hidden_layers=30)
    decided = TrainSettings().training_arguments(str(tmp_path), 0, False, model_config=model)
    assert decided.gradient_checkpointing is not forced  # easyllm alone would choose the other way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the user chose the deprecated name
        args = TrainSettings(trainer_args={"gradient_checkpointing": forced}).training_arguments(
            str(tmp_path), 0, False, model_config=model
        )
    assert args.gradient_checkpointing is forced
