"""The three-line path on the built-in model: teach it a new identity, then ask who it is.

Run from the repository root: python examples/quickstart.py  (a few minutes on 2 CPU cores)
"""

from pathlib import Path

from easyllm import ModelRunner

data = Path(__file__).parent / "data" / "identity.jsonl"

runner = ModelRunner()  # built-in SmolLM2-135M-Instruct, works offline
before = runner.generate("Who are you?", max_new_tokens=48)

runner.load_data(data)
result = runner.train()
after = runner.generate("Who are you?", max_new_tokens=48)

print(f"\nBefore training: {before}")
print(f"After training:  {after}")
print(f"Eval loss {result.metrics['eval_loss']:.3f}; run saved in {result.output_dir}")
