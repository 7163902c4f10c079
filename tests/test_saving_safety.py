"""Nothing runs unasked, nothing is lost, a folder holds only what its last save wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from easyllm import ConfigError, ModelRunner, UsageError

FAST = {"max_steps": 2, "per_device_train_batch_size": 4, "disable_tqdm": True}


def test_a_folder_cannot_ask_for_remote_code(tiny_model_dir, tmp_path):
    folder = ModelRunner(str(tiny_model_dir)).save(tmp_path / "run")
    info = json.loads((folder / "easyllm.json").read_text())
    info["trust_remote_code"] = True  # as a downloaded run might say
    (folder / "easyllm.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"trust_remote_code=True"):
        ModelRunner.load(folder)
    assert ModelRunner.load(folder, trust_remote_code=True).trust_remote_code is True


def test_the_trained_model_is_saved_before_evaluation_can_fail(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=2)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("while generating held-out replies")

    runner.evaluate = out_of_memory
    with pytest.raises(MemoryError):
        runner.train(output_dir=str(tmp_path / "run"), eval_strategy="no", **FAST)
    saved = tmp_path / "run" / "easyllm.json"
    assert saved.is_file() and (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert ModelRunner.load(tmp_path / "run").generate("Hi", max_new_tokens=2) is not None


def test_held_out_metrics_reach_the_saved_records(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=2)
    runner.train(output_dir=str(tmp_path / "run"), eval_strategy="no", **FAST)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "eval_loss" in metrics and "rouge_l" in metrics
    assert "eval_loss" in (tmp_path / "run" / "README.md").read_text()


def test_a_full_save_over_a_lora_save_leaves_no_adapter(tiny_model_dir, chats, tmp_path):
    folder = tmp_path / "model"
    lora = ModelRunner(str(tiny_model_dir))
    lora.load_data(chats, val_size=0)
    lora.train(output_dir=str(tmp_path / "lora"), **FAST)
    lora.save(folder)
    assert (folder / "adapter_config.json").is_file()
    (folder / "notes.txt").write_text("mine")  # not easyllm's: stays
    full = ModelRunner(str(tiny_model_dir), method="full")
    full.load_data(chats, val_size=0)
    full.train(output_dir=str(tmp_path / "full"), learning_rate=1e-3, **FAST)
    full.save(folder)
    assert not (folder / "adapter_config.json").exists()
    assert not list(folder.glob("adapter_model*"))
    assert (folder / "notes.txt").read_text() == "mine"
    reloaded = ModelRunner.load(folder)
    assert reloaded.settings.method == "full" and not hasattr(reloaded.model, "peft_config")


def test_a_merge_into_a_saved_folder_leaves_a_plain_model(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0)
    runner.train(output_dir=str(tmp_path / "run"), **FAST)
    folder = runner.save(tmp_path / "model")
    runner.merge(folder, check=False)
    assert not (folder / "adapter_config.json").exists()
    assert not (folder / "easyllm.json").exists()  # a plain transformers folder, not a LoRA save
    assert (folder / "model.safetensors").is_file()


def test_an_ordinary_project_folder_is_never_trained_into(tiny_model_dir, chats, tmp_path):
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0)
    with pytest.raises(ConfigError, match=r"not an easyllm run \(README\.md\)"):
        runner.train(output_dir=str(project), **FAST)
    assert (project / "README.md").read_text() == "my project"
    assert sorted(p.name for p in project.iterdir()) == ["README.md"]


def test_a_run_another_process_trains_in_is_refused(tiny_model_dir, chats, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen(  # another notebook, training in that folder
        [sys.executable, "-c", HOLD_LOCK, str(folder / ".easyllm-train.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        runner = ModelRunner(str(tiny_model_dir))
        runner.load_data(chats, val_size=0)
        with pytest.raises(UsageError, match="Another process is training in"):
            runner.train(output_dir=str(folder), **FAST)
    finally:
        holder.kill()
        holder.wait()
    runner.train(output_dir=str(folder), **FAST)  # free again: trains
    assert (folder / "easyllm.json").is_file()


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "w")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_checkpoints_never_hold_the_hub_token(tiny_model_dir, chats, tmp_path):
    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0)
    secret = "hf_NeverInACheckpoint1234567890"
    runner.train(output_dir=str(tmp_path / "run"), hub_token=secret, save_steps=1, **FAST)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    assert runner.settings.trainer_args["hub_token"] == secret  # the user's value is kept


def test_a_push_carries_no_local_path_and_no_held_out_replies(tiny_model_dir, chats, tmp_path):
    uploaded: dict[str, bytes] = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            files = Path(folder_path).iterdir()
            uploaded.update({p.name: p.read_bytes() for p in files if p.is_file()})

    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=2)
    runner.train(output_dir=str(tmp_path / "run"), **FAST)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("huggingface_hub.HfApi", FakeApi)
        runner.push_to_hub("me/tiny")
        assert not [name for name, data in uploaded.items() if str(tiny_model_dir).encode() in data]
        uploaded.clear()
        runner.push_to_hub("me/tiny-merged", merge=True)
    assert "parity.json" not in uploaded and "model.safetensors" in uploaded
    assert (tmp_path / "run" / "easyllm.json").read_text().count(str(tiny_model_dir)) == 1


def test_a_merged_folder_stops_under_plain_transformers_like_easyllm(
    tiny_model_dir, chats, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runner = ModelRunner(str(tiny_model_dir))
    runner.load_data(chats, val_size=0)
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=2e-2, **{**FAST, "max_steps": 60})
    folder = runner.merge(tmp_path / "merged", check=False)
    assert "local_files_only" not in (folder / "tokenizer_config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    end_of_turn = runner.encoder.end_of_turn_ids[0]
    assert end_of_turn in model.generation_config.eos_token_id
    assert model.generation_config.max_new_tokens == 256
    prompt = runner.encoder.encode_prompt([{"role": "user", "content": "Who are you? (3)"}])
    ids = torch.tensor([prompt])
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids))[0, len(prompt) :]
    reply = runner.generate("Who are you? (3)", return_details=True)
    assert reply.finish_reason == "stop"  # easyllm's reply ended its turn
    assert plain[-1].item() == end_of_turn  # stopped where training taught it to, untold
    assert tokenizer.decode(plain, skip_special_tokens=True).strip() == reply.text
