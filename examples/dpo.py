"""DPO on the built-in model: prefer a friendly one-sentence answer over a refusal.

Run from the repository root: python examples/dpo.py  (a few minutes on 2 CPU cores; needs trl)
"""

from easyllm import ModelRunner

topics = [
    "the sea",
    "a cat",
    "rain",
    "the moon",
    "coffee",
    "a forest",
    "winter",
    "music",
    "a train",
    "bread",
    "the wind",
    "a river",
    "snow",
    "a garden",
    "the sun",
    "a book",
]
pairs = [
    {
        "prompt": f"Describe {topic} in one sentence.",
        "chosen": f"Here is one sentence about {topic}: it is wonderful.",
        "rejected": f"I don't want to talk about {topic}.",
    }
    for topic in topics
]

runner = ModelRunner(task="dpo")  # built-in SmolLM2-135M-Instruct; LoRA, reference = adapter off
runner.load_data(pairs, val_size=4, max_length=128)
before = runner.evaluate()
result = runner.train(num_train_epochs=1, per_device_train_batch_size=4)

for name in ("eval_reward_accuracy", "eval_reward_margin"):
    print(f"{name}: {before[name]:.3f} before, {result.metrics[name]:.3f} after")
print(runner.generate("Describe a mountain in one sentence.", max_new_tokens=40))
