"""KTO on the built-in model: replies marked good or bad one at a time, no pairs needed.

Run from the repository root: python examples/kto.py  (a few minutes on 2 CPU cores; needs trl)
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
rows = []
for index, topic in enumerate(topics):
    good = index % 2 == 0  # each prompt gets one reply, half of them desirable
    reply = (
        f"Here is one sentence about {topic}: it is wonderful."
        if good
        else f"I don't want to talk about {topic}."
    )
    rows.append(
        {
            "messages": [
                {"role": "user", "content": f"Describe {topic} in one sentence."},
                {"role": "assistant", "content": reply},
            ],
            "label": good,
        }
    )

runner = ModelRunner(task="kto")
runner.load_data(rows, val_size=4, max_length=128)
result = runner.train(num_train_epochs=2, per_device_train_batch_size=4)

print(
    f"held-out reward accuracy {result.metrics['eval_reward_accuracy']:.2f}, "
    f"margin {result.metrics['eval_reward_margin']:.3f}"
)
print(runner.generate("Describe a mountain in one sentence.", max_new_tokens=40))
