r"""The quickstart as one script that runs alone or in several processes and resumes when restarted.

    python examples/accelerate/train.py                       # one process
    torchrun --nproc_per_node 2 examples/accelerate/train.py  # 2 processes (GPUs, or CPU: gloo)
    accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml \
        examples/accelerate/train.py

Run it again after a crash, a kill or Ctrl-C: it continues from the last checkpoint. Every
process runs the same lines; only the main one prints and writes files.
"""

from pathlib import Path

import torch

from easyllm import ModelRunner
from easyllm.train.checkpoints import latest_checkpoint

data = Path(__file__).parents[1] / "data" / "identity.jsonl"
run = Path("easyllm-runs") / "identity-multi"

runner = ModelRunner()
runner.load_data(data)
unfinished = latest_checkpoint(run) is not None and not (run / "easyllm.json").exists()
result = runner.train(output_dir=str(run), resume=unfinished, overwrite=not unfinished)
print(f"Eval loss {result.metrics['eval_loss']:.3f}; run saved in {result.output_dir}")
# leave together: a process group torn down at exit may abort
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
