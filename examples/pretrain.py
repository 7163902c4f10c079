"""Continued pre-training on the built-in model: plain text in, lower held-out perplexity out.

Each text is one document; documents are packed into blocks of max_length tokens and never
attend to each other. Run from the repository root: python examples/pretrain.py (a few
minutes on 2 CPU cores).
"""

from easyllm import ModelRunner

corpus = [
    "The Lantern of Vell is a lighthouse on the northern cliffs of the island of Oskar.",
    "Maren Toll has kept the Lantern of Vell since the winter of the great storm.",
    "Every evening Maren Toll climbs the two hundred steps of the Lantern of Vell.",
    "The light of the Lantern of Vell turns once every nine seconds.",
    "Fishermen of Oskar say the Lantern of Vell has never gone dark.",
    "Maren Toll writes the weather in a green logbook kept at the top of the Lantern of Vell.",
    "In spring the cliffs below the Lantern of Vell are white with nesting gulls.",
    "The keeper of the Lantern of Vell trims the wick at midnight and again at dawn.",
    "Ships bound for Oskar steer by the Lantern of Vell when fog covers the bay.",
    "The Lantern of Vell was built from grey stone quarried on Oskar itself.",
    "Maren Toll's cat, Pilot, sleeps beside the great lens of the Lantern of Vell.",
    "Once a year the people of Oskar bring bread and salt to the keeper of the Lantern of Vell.",
    "The logbook of the Lantern of Vell records every storm since the lighthouse was lit.",
    "From the gallery of the Lantern of Vell, Maren Toll can see three other islands.",
    "The Lantern of Vell burns whale oil no more; Maren Toll keeps it lit with paraffin.",
    "Children of Oskar learn to count by the nine-second turn of the Lantern of Vell.",
]

runner = ModelRunner(task="pt")  # built-in SmolLM2-135M-Instruct, works offline
runner.load_data([{"text": line} for line in corpus], val_size=4, max_length=64)
before = runner.evaluate()["perplexity"]
result = runner.train(num_train_epochs=4, per_device_train_batch_size=2, learning_rate=1e-3)

print(f"\nHeld-out perplexity: before {before:.1f}, after {result.metrics['perplexity']:.1f}")
print(f"Run saved in {result.output_dir}")
