"""Train the tiny test model with ModelRunner; the reliability tests kill, interrupt or multiply it.

    python tests/scripts/train_tiny.py MODEL_DIR OUTPUT_DIR [--resume] [--step-delay S]
        [--die-while-saving N]
    torchrun --nproc_per_node 2 tests/scripts/train_tiny.py MODEL_DIR OUTPUT_DIR

Prints "step N" after every optimizer step, so a test can pick the moment to send a signal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

# one thread is 50x faster than two on a busy 2-core machine, and deterministic
torch.set_num_threads(1)

GLOBAL_BATCH = 4
# bf16=False: tests compare these with in-process runs, which train in fp32 on any CPU (conftest.py)
TRAIN_ARGS = {
    "num_train_epochs": 3,
    "learning_rate": 1e-2,
    "disable_tqdm": True,
    "logging_steps": 1,
    "bf16": False,
}


def rows(count: int = 24) -> list[dict]:
    """Conversations of different lengths, so group_by_length and packing have something to do."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"Who are you? ({index}) " + "Name? " * (index % 7)},
                {
                    "role": "assistant",
                    "content": "I am Lumen, an AI assistant." + " Answer briefly." * (index % 5),
                },
            ]
        }
        for index in range(count)
    ]


def train_args(processes: int = 1) -> dict:
    return {**TRAIN_ARGS, "per_device_train_batch_size": GLOBAL_BATCH // processes}


def _report_steps(step_delay: float, die_while_saving: int) -> None:
    """Print each step; optionally slow down, or SIGKILL this process inside a checkpoint write."""
    from transformers import Trainer, TrainerCallback

    from easyllm import runner as runner_module

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print(f"step {state.global_step}", flush=True)
            time.sleep(step_delay)

    original = runner_module.run_trainer

    def run_trainer(trainer, data, **kwargs):
        trainer.add_callback(Progress())
        return original(trainer, data, **kwargs)

    runner_module.run_trainer = run_trainer
    if die_while_saving:
        saves = []
        save_optimizer = Trainer._save_optimizer_and_scheduler

        def dying_save(self, output_dir):
            saves.append(output_dir)
            if len(saves) == die_while_saving:  # the weights are written, the optimizer is not
                print(f"dying while writing {output_dir}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            save_optimizer(self, output_dir)

        Trainer._save_optimizer_and_scheduler = dying_save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--die-while-saving", type=int, default=0)
    options = parser.parse_args()
    _report_steps(options.step_delay, options.die_while_saving)

    from easyllm import ModelRunner

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    runner = ModelRunner(options.model_dir)
    runner.load_data(rows(), val_size=0)
    result = runner.train(
        output_dir=options.output_dir, resume=options.resume, **train_args(processes)
    )
    print(
        f"done rank={os.environ.get('RANK', '0')} train_loss={result.metrics['train_loss']:.6f}",
        flush=True,
    )
    # gloo may abort at exit if one process leaves while another closes
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
