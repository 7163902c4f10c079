"""Packing equals no packing, attention never crosses an example, and the chunked loss is exact."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from easyllm.data.collator import PaddingCollator
from easyllm.data.encoding import IGNORE_INDEX, ChatEncoder
from easyllm.data.packing import PackedCollator, best_fit_decreasing, pack_row
from easyllm.train import attention
from easyllm.train.attention import (
    example_spans,
    packed_attention,
    packed_attention_forward,
    supports_packed_attention,
)
from easyllm.train.loss import trained_token_loss, trained_token_loss_sum


@pytest.fixture(scope="module")
def model64(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()


@pytest.fixture
def examples(tokenizer):
    from datasets import Dataset

    encoder = ChatEncoder(tokenizer)
    rng = random.Random(0)
    rows = {"input_ids": [], "labels": []}
    for index in range(9):
        question = " ".join(
            rng.choice(["who", "are", "you", "the", "capital"]) for _ in range(rng.randint(1, 12))
        )
        answer = " ".join(
            rng.choice(["I", "am", "Lumen", "Paris", "."]) for _ in range(rng.randint(1, 9))
        )
        encoded = encoder.encode(
            [
                {"role": "user", "content": f"{question} {index}"},
                {"role": "assistant", "content": answer},
            ]
        )
        rows["input_ids"].append(encoded.input_ids)
        rows["labels"].append(encoded.labels)
    return Dataset.from_dict(rows)


def _loss_sum(model, batch) -> tuple[float, int]:
    with torch.no_grad():
        loss, count = trained_token_loss(model, batch)
    return loss.item(), count


def test_best_fit_decreasing_packs_every_item_once_within_capacity():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(200)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= -(-sum(lengths) // 128) * 1.25  # close to the lower bound
    assert best_fit_decreasing([200, 5], 128) == [[0], [1]]  # too long: a row of its own


def test_packing_gives_the_same_loss_as_no_packing(model64, examples):
    padded = PaddingCollator(pad_token_id=0)([examples[i] for i in range(len(examples))])
    plain = model64(**{k: v for k, v in padded.items()}).loss.item()  # transformers' own loss
    unpacked_sum, unpacked_count = _loss_sum(model64, padded)
    packed = PackedCollator(pad_token_id=0, max_length=128)(
        [examples[i] for i in range(len(examples))]
    )
    assert len(packed["input_ids"]) < len(examples)
    packed_sum, packed_count = _loss_sum(model64, packed)
    assert packed_count == unpacked_count
    assert packed_sum / packed_count == pytest.approx(unpacked_sum / unpacked_count, abs=1e-10)
    # logits upcast to fp32 in both
    assert unpacked_sum / unpacked_count == pytest.approx(plain, abs=1e-6)


def test_no_position_attends_across_an_example(model64, examples):
    row = pack_row([examples[0], examples[1]])
    boundary = next(i for i in range(1, len(row["position_ids"])) if row["position_ids"][i] == 0)
    assert boundary == len(examples[0]["input_ids"])
    batch = {key: torch.tensor([value]) for key, value in row.items()}
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, :boundary] = (
        changed["input_ids"][0, :boundary] + 7
    ) % model64.config.vocab_size
    decoder = model64.get_decoder()  # as the Trainer runs it: no cache, no attention mask
    with torch.no_grad():
        original = decoder(**batch_inputs(batch), use_cache=False).last_hidden_state
        perturbed = decoder(**batch_inputs(changed), use_cache=False).last_hidden_state
    assert not torch.allclose(original[0, :boundary], perturbed[0, :boundary])
    torch.testing.assert_close(original[0, boundary:], perturbed[0, boundary:], rtol=0, atol=1e-12)


def batch_inputs(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}


def test_packed_labels_never_predict_across_a_boundary(examples):
    row = pack_row([examples[0], examples[1]])
    starts = [i for i, position in enumerate(row["position_ids"]) if position == 0]
    assert all(row["labels"][start] == IGNORE_INDEX for start in starts)


@pytest.mark.parametrize("bias", [False, True], ids=["fused-gradient", "recomputed-chunks"])
@pytest.mark.parametrize("compiled", [False, True])
def test_chunked_trained_only_loss_equals_the_plain_loss_and_gradients(compiled, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=bias, dtype=torch.float64)
    hidden = torch.randn(3, 11, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[:, :4] = IGNORE_INDEX
    labels[1, 7:] = IGNORE_INDEX
    chunked, count = trained_token_loss_sum(hidden, labels, head, chunk=3, compiled=compiled)
    plain = F.cross_entropy(
        head(hidden)[:, :-1].flatten(0, 1),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(chunked, plain.float())
    grad_chunked = torch.autograd.grad(chunked, [hidden, head.weight])
    grad_plain = torch.autograd.grad(plain, [hidden, head.weight])
    for a, b in zip(grad_chunked, grad_plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def test_the_output_layer_runs_once_per_chunk_and_never_again_in_the_backward():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).requires_grad_(False)  # frozen, as under LoRA
    hidden = torch.randn(2, 40, 16, requires_grad=True)
    labels = torch.randint(0, 300, (2, 40))
    with _CountMatmuls() as forward:
        loss, count = trained_token_loss_sum(hidden, labels, head, chunk=32)
    with _CountMatmuls() as backward:
        loss.backward()
    assert count == 78
    assert forward.count == 3 * 2  # 3 chunks: logits, then their gradient back to the hidden states
    assert backward.count == 0


def test_the_fused_loss_under_bf16_autocast_follows_autograd_through_the_same_casts():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 500, bias=False)
    hidden = torch.randn(1, 90, 32, requires_grad=True)
    labels = torch.randint(0, 500, (1, 90))
    labels[0, :20] = IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, count = trained_token_loss_sum(hidden, labels, head, chunk=16)
        reference = F.cross_entropy(head(hidden[0, :-1]).float(), labels[0, 1:], reduction="sum")
    assert count == 70
    torch.testing.assert_close(fused, reference)
    (grad_fused,) = torch.autograd.grad(fused, hidden)
    (grad_reference,) = torch.autograd.grad(reference, hidden)
    torch.testing.assert_close(grad_fused, grad_reference, rtol=2e-2, atol=1e-3)


def test_a_one_row_batch_with_per_example_attention_gives_the_unpacked_loss_and_gradients(
    model64, examples
):
    batch = [examples[i] for i in range(len(examples))]
    padded = PaddingCollator(pad_token_id=0)(batch)
    one_row = PackedCollator(pad_token_id=0, max_length=128, one_row=True)(batch)
    # no padding at all
    assert one_row["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in batch))
    model64.train()  # attention per example is for training: the switch restores sdpa after it
    try:
        expected, expected_count = trained_token_loss(model64, padded)
        expected_grads = torch.autograd.grad(
            expected, model64.model.layers[0].self_attn.q_proj.weight
        )
        with packed_attention(model64, True):
            assert model64.config._attn_implementation == "easyllm_packed"
            got, got_count = trained_token_loss(model64, one_row)
            got_grads = torch.autograd.grad(got, model64.model.layers[0].self_attn.q_proj.weight)
    finally:
        model64.eval()
    assert model64.config._attn_implementation == "sdpa"
    assert got_count == expected_count
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(got_grads[0], expected_grads[0], rtol=1e-8, atol=1e-10)


def test_per_example_attention_never_attends_across_an_example(model64, examples):
    row = pack_row([examples[0], examples[1], examples[2]])
    second = len(examples[0]["input_ids"])
    batch = {key: torch.tensor([value]) for key, value in row.items()}
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, :second] = (
        changed["input_ids"][0, :second] + 7
    ) % model64.config.vocab_size
    decoder = model64.get_decoder()
    with torch.no_grad(), packed_attention(model64, True):
        original = decoder(**batch_inputs(batch), use_cache=False).last_hidden_state
        perturbed = decoder(**batch_inputs(changed), use_cache=False).last_hidden_state
    assert not torch.allclose(original[0, :second], perturbed[0, :second])
    torch.testing.assert_close(original[0, second:], perturbed[0, second:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["cpu", "autograd"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_per_example_attention_in_low_precision_follows_float64(dtype, tolerance, path):
    """The CPU path runs bf16's forward in bf16 and every backward in fp32; the autograd path (GPUs,
    attention dropout) runs span by span: both close to float64."""
    torch.manual_seed(0)
    positions = torch.tensor([list(range(5)) + list(range(11)) + list(range(3)), list(range(19))])
    query, key, value = (torch.randn(2, heads, 19, 8, dtype=torch.float64) for heads in (4, 2, 2))
    upstream = torch.randn(2, 19, 4, 8, dtype=torch.float64)

    def run(attention, precision: torch.dtype) -> list[torch.Tensor]:
        inputs = [t.detach().to(precision).requires_grad_() for t in (query, key, value)]
        output = attention(*inputs)
        output.backward(upstream.to(precision))
        return [output.detach().double()] + [t.grad.double() for t in inputs]

    def dense(q, k, v):  # the plain definition: a causal mask within each example, nothing across
        starts = (positions == 0).cumsum(1)
        allowed = (starts[:, :, None] == starts[:, None, :]) & torch.ones(
            19, 19, dtype=torch.bool
        ).tril()
        scores = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / 8**0.5
        weights = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        return (weights @ v.repeat_interleave(2, dim=1)).transpose(1, 2)

    def packed(q, k, v):
        if path == "autograd":
            return attention._attend(example_spans(positions), q, k, v, 0.0, None).transpose(1, 2)
        return packed_attention_forward(None, q, k, v, None, position_ids=positions)[0]

    reference, got = run(dense, torch.float64), run(packed, dtype)
    for name, want, have in zip(["output", "query grad", "key grad", "value grad"], reference, got):
        error = ((have - want).abs().max() / want.abs().max()).item()
        assert error < tolerance, f"{name}: {error:.2e}"
    assert not torch.equal(got[0], reference[0])  # really computed in `dtype`, not in float64


def test_example_spans_start_wherever_positions_restart():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert example_spans(positions) == [(0, 0, 3), (0, 3, 5), (0, 5, 6), (1, 0, 6)]


def test_per_example_attention_only_where_it_computes_what_the_model_does(tiny_model_dir):
    from transformers import AutoConfig, MistralConfig, MistralForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert supports_packed_attention(model, 512)
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not supports_packed_attention(eager, 512)  # the user chose another attention: left alone
    config = AutoConfig.from_pretrained(tiny_model_dir)
    windowed = MistralForCausalLM(
        MistralConfig(**{**config.to_dict(), "model_type": "mistral", "sliding_window": 64})
    )
    assert supports_packed_attention(windowed, 64)
    # an example longer than the window: the mask is needed
    assert not supports_packed_attention(windowed, 128)
