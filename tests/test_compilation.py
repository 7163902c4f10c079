"""Compiled decoder layers: the eager loss and gradients, only for runs long enough to pay off."""

from __future__ import annotations

import pytest
import torch

from easyllm import ModelRunner
from easyllm.methods import make_trainable
from easyllm.train import compilation
from easyllm.train.compilation import compiled_layers, decoder_layers, worth_compiling
from easyllm.train.loss import trained_token_loss
from easyllm.train.settings import TrainSettings


def test_only_runs_long_enough_to_pay_for_compiling_are_compiled():
    cpu = torch.device("cpu")
    assert not worth_compiling(100_000, 50_000, cpu)  # a tiny test model: milliseconds of training
    assert not worth_compiling(135_000_000, 5_000, cpu)  # a handful of SmolLM2 examples
    assert worth_compiling(135_000_000, 256 * 200 * 3, cpu)  # 256 chats, 3 epochs: minutes on a CPU


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, count = trained_token_loss(model, batch)
    (loss / count).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item() / count, grads


def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir))
    torch.manual_seed(0)
    model = make_trainable(runner.model, TrainSettings(), task_type="CAUSAL_LM")
    model.train()
    ids = torch.randint(5, 250, (2, 24))
    batch = {
        "input_ids": ids,
        "position_ids": torch.cat([torch.arange(10), torch.arange(14)]).repeat(2, 1),
        "labels": ids.clone(),
    }
    eager_loss, eager_grads = _loss_and_grads(model, batch)

    with compiled_layers(model, True) as compiled:
        assert compiled == len(decoder_layers(model)) == 2
        compiled_loss, compiled_grads = _loss_and_grads(model, batch)
        # another length: no new failure
        batch = {key: value[:, :20] for key, value in batch.items()}
        _loss_and_grads(model, batch)

    assert abs(compiled_loss - eager_loss) < 1e-5
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6)
    # generation runs eager
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    assert isinstance(runner.generate("Hi", max_new_tokens=3), str)


def _kept_for_backward(model, batch) -> int:
    """Bytes the forward keeps for the backward, parameters aside."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss, count = trained_token_loss(model, batch)
    (loss / count).backward()
    return sum(kept.values())


def test_compiled_layers_recompute_cheap_results_instead_of_keeping_them(
    tiny_model_dir, monkeypatch
):
    torch.manual_seed(0)
    model = make_trainable(
        ModelRunner(str(tiny_model_dir)).model, TrainSettings(), task_type="CAUSAL_LM"
    )
    model.train()
    ids = torch.randint(5, 250, (1, 64))
    batch = {"input_ids": ids, "position_ids": torch.arange(64)[None], "labels": ids.clone()}
    kept = {}
    # torch's default partitioner, then easyllm's
    for recompute in ((), compilation._RECOMPUTE_FREELY):
        monkeypatch.setattr(compilation, "_RECOMPUTE_FREELY", recompute)
        torch._dynamo.reset()
        with compiled_layers(model, True):
            kept[recompute] = _kept_for_backward(model, batch)
    torch._dynamo.reset()
    assert kept[compilation._RECOMPUTE_FREELY] < 0.9 * kept[()], kept


@pytest.mark.parametrize("checkpointing", [False, True])
def test_train_with_compile_learns_like_eager(tiny_model_dir, chats, tmp_path, checkpointing):
    weights = {}
    for compile in (False, True):
        runner = ModelRunner(str(tiny_model_dir))
        runner.load_data(chats, val_size=0)
        runner.train(
            compile=compile,
            num_train_epochs=1,
            per_device_train_batch_size=4,
            disable_tqdm=True,
            gradient_checkpointing=checkpointing,
            output_dir=str(tmp_path / f"compile-{compile}"),
        )
        weights[compile] = {
            name: p.detach().clone()
            for name, p in runner.model.named_parameters()
            if "lora" in name
        }
    assert weights[True].keys() == weights[False].keys() and weights[True]
    assert any(
        name.endswith("lora_B.default.weight") and value.abs().sum() > 0
        for name, value in weights[True].items()
    )
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-3, atol=1e-5)
