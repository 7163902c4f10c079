"""Distillation: SmolLM2 writes the answers, a smaller student learns from them.

Run from the repository root: python examples/distill.py  (a few minutes on 2 CPU cores)

1. The teacher (the built-in SmolLM2-135M-Instruct, 30 layers) answers 48 prompts with a
   careful system prompt; easyllm.synthesize() keeps the complete, distinct answers.
2. The student is the teacher cut to 12 layers, the first 4 and the last 8: copying a subset
   of the teacher's layers is a common way to start a distilled model (DistilBERT kept every
   other layer; for decoders, dropping middle layers and keeping the last ones hurts least).
3. The student is fine-tuned on the teacher's answers and evaluated on held-out ones before
   and after: its loss on the teacher's answers falls and its replies move toward them.

Run it again and synthesize() resumes: the answers already in easyllm-data/ are not asked for again.
"""

import copy
import json
import re
import tempfile
from pathlib import Path

from easyllm import ModelRunner, synthesize

PROMPTS = Path(__file__).parent / "data" / "distill_prompts.jsonl"
SYSTEM = "You are a patient teacher. Answer in one or two short, plain sentences."
KEEP_LAYERS = [0, 1, 2, 3, *range(22, 30)]  # of SmolLM2-135M's 30
HELD_OUT = 8


def smaller_copy(teacher: ModelRunner, layers: list[int], folder: Path) -> Path:
    """Save the teacher with only `layers` (renumbered from 0) as a folder a ModelRunner loads."""
    model = teacher.model
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    weights = {}
    for name, tensor in model.state_dict().items():
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if match is None:
            weights[name] = tensor  # embeddings, final norm, output layer
        elif int(match[1]) in layers:
            weights[f"model.layers.{layers.index(int(match[1]))}.{match[2]}"] = tensor
    student = type(model)(config)
    student.load_state_dict(weights)
    student.save_pretrained(folder)
    teacher.tokenizer.save_pretrained(folder)
    return folder


def write_rows(rows: list[str], path: Path) -> Path:
    path.write_text("".join(row + "\n" for row in rows))
    return path


def parameters(runner: ModelRunner) -> int:
    return sum(p.numel() for p in runner.model.parameters())


teacher = ModelRunner()  # built-in SmolLM2-135M-Instruct, works offline
answers = synthesize(
    PROMPTS, teacher, output="easyllm-data/distill/answers.jsonl", system=SYSTEM, max_new_tokens=64
)
rows = answers.read_text().splitlines()

with tempfile.TemporaryDirectory(prefix="easyllm-distill-") as folder:
    work = Path(folder)
    train = write_rows(rows[:-HELD_OUT], work / "train.jsonl")
    held_out = write_rows(rows[-HELD_OUT:], work / "held_out.jsonl")
    student = ModelRunner(smaller_copy(teacher, KEEP_LAYERS, work / "student"), method="full")
    print(
        f"Teacher: {parameters(teacher):,} parameters; student: {parameters(student):,} "
        f"({len(KEEP_LAYERS)} of {teacher.model.config.num_hidden_layers} layers)"
    )
    before = student.evaluate(held_out, max_new_tokens=64)

    student.load_data(train, val_size=0)
    # A short run: no intermediate checkpoints (each would hold full weights and optimizer state).
    result = student.train(num_train_epochs=6, learning_rate=3e-4, save_strategy="no")
    after = student.evaluate(held_out, max_new_tokens=64)

last = json.loads(rows[-1])["messages"]
print(f"\nHeld-out question: {last[-2]['content']}")
print(f"Teacher: {last[-1]['content']}")
print(f"Student: {student.generate(last[-2]['content'], system=SYSTEM, max_new_tokens=64)}")
print(
    f"\nStudent against the teacher's {HELD_OUT} held-out answers "
    f"(the student is saved in {result.output_dir}):"
)
for name in ("eval_loss", "token_f1", "rouge_l"):
    if name in before:
        print(f"{name}: before {before[name]:.3f}, after {after[name]:.3f}")
