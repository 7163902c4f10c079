"""A reward model on the built-in model: learn which of two replies people prefer, then score them.

Run from the repository root: python examples/reward_model.py (a few minutes on 2 CPU cores).
"""

from easyllm import ModelRunner

questions = [
    "How do I boil an egg?",
    "What is the capital of France?",
    "Can you recommend a book?",
    "How far is the Moon?",
    "What does a CPU do?",
    "How do I make tea?",
    "Why is the sky blue?",
    "What is 12 times 12?",
    "How do plants grow?",
    "Who wrote Hamlet?",
    "What is Python?",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "How do I learn to swim?",
    "What is a noun?",
    "How do magnets work?",
    "What causes rain?",
    "How do I reset my password?",
    "What is the speed of light?",
    "Why do cats purr?",
]
pairs = [
    {
        "prompt": question,
        "chosen": "Happy to help! Here is a clear, friendly answer to your question.",
        "rejected": "Not my problem. Look it up yourself.",
    }
    for question in questions
]

runner = ModelRunner(task="rm")  # built-in SmolLM2-135M-Instruct with a new one-output head
runner.load_data(pairs, val_size=4)
result = runner.train(num_train_epochs=2, learning_rate=1e-3)

question = [{"role": "user", "content": "How do I fold a paper plane?"}]
polite_reply = {"role": "assistant", "content": "Happy to help! Here is a clear, friendly answer."}
rude_reply = {"role": "assistant", "content": "Not my problem. Look it up yourself."}
polite, rude = runner.score([question + [polite_reply], question + [rude_reply]])
print(
    f"\nHeld-out accuracy {result.metrics['accuracy']:.2f}, margin {result.metrics['margin']:.2f}"
)
print(f"Scores: polite reply {polite:.2f}, rude reply {rude:.2f}")
print(f"Run saved in {result.output_dir}")
