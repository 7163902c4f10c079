"""SFT throughput and memory: easyllm's defaults measured side by side with TRL and a plain Trainer.

Four configurations train the same LoRA (r=16, alpha=32, dropout 0, all linear layers) on the
same model, rows, batch size (8), learning rate (5e-4), seed and number of steps:

  easyllm         ModelRunner defaults: each batch's examples in one padding-free row, attention
                  per example, loss (and the output layer) only on trained positions, bf16
                  autocast where the CPU's bf16 matmuls are fast
  trl-default     SFTTrainer with SFTConfig defaults (gradient checkpointing, bf16 autocast,
                  no packing, loss on every token)
  trl-tuned       SFTTrainer with packing=True (bfd, hence padding-free), no checkpointing
  trainer-padded  transformers Trainer, DataCollatorForSeq2Seq padding, labels masked to the
                  replies exactly as easyllm masks them

Each configuration runs in its own process (this script with `--run NAME`), in alternating
order, `--repeats` times. A callback times every step and a wrapper around each trainer's data
collator counts the tokens of the batches really trained on; the first `--warmup` steps are not
timed. The parent writes RESULTS.md and results.json to `--out`.

    python benchmarks/sft_throughput.py                               # the full CPU run
    python benchmarks/sft_throughput.py --steps 1 --rows 16 --out /tmp/bench_try   # smoke test
    python benchmarks/sft_throughput.py --gpu                         # the same on CUDA, bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

DATA_FILE = Path("/work/shared/data/alpaca_en_demo.json")
CONFIG_ORDER = (
    "easyllm",
    "trl-default",
    "trl-tuned",
    "trainer-padded",
    "easyllm-fp32",
    "easyllm-eager",
    "easyllm-no-ckpt",
    "easyllm-ckpt",
)
DEFAULT_CONFIGS = ("easyllm", "trl-default", "trl-tuned", "trainer-padded")
MAX_LENGTH = 512
BATCH_SIZE = 8
LEARNING_RATE = 5e-4  # easyllm's LoRA default, given to every configuration
SEED = 42
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
# SFTConfig fields whose defaults matter here, recorded from the installed TRL by trl-default.
TRL_FIELDS = (
    "gradient_checkpointing",
    "bf16",
    "packing",
    "packing_strategy",
    "padding_free",
    "assistant_only_loss",
    "completion_only_loss",
    "loss_type",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "weight_decay",
    "logging_steps",
    "max_length",
    "pad_to_multiple_of",
)

SETTINGS = {
    "easyllm": (
        "ModelRunner(MODEL_DIR); load_data(rows, val_size=0, max_length=512); train(max_steps, "
        "per_device_train_batch_size=8, lora_r=16, lora_alpha=32, logging_steps=1). easyllm "
        "defaults: bf16 autocast where this CPU's bf16 matmuls measure at least 1.5x fp32's (else "
        "fp32), gradient checkpointing decided from the activation estimate and available memory, "
        "decoder layers and the loss compiled (torch.compile) when the run is long enough to pay "
        "for it (estimated from 6·N·D; compiling happens in the warm-up step), each batch's 8 "
        "examples in one padding-free row with causal attention run per example (no mask), "
        "group_by_length sampling, cosine schedule with 5% warm-up, loss on the assistant replies "
        "only, output layer run on trained positions only"
    ),
    "easyllm-fp32": "as easyllm, with bf16=False forced (fp32)",
    "easyllm-eager": "as easyllm, with compile=False forced (no torch.compile)",
    "easyllm-no-ckpt": "as easyllm, with gradient_checkpointing=False forced",
    "easyllm-ckpt": "as easyllm, with gradient_checkpointing=True forced",
    "trl-default": (
        "SFTTrainer(MODEL_DIR, args=SFTConfig(max_length=512, per_device_train_batch_size=8, "
        "max_steps, seed=42, learning_rate=5e-4, report_to='none', logging_steps=1), "
        "train_dataset=<messages>, peft_config=LoraConfig(...)); everything else TRL's default "
        "(recorded below). On CPU also use_cpu=True: TrainingArguments refuses TRL's default "
        "bf16=True without a GPU otherwise"
    ),
    "trl-tuned": (
        "trl-default plus packing=True, packing_strategy='bfd' (which turns padding_free on): each "
        "of the 8 batch rows is a 512-token bin of whole examples, and the batch is flattened into "
        "one row of up to 4,096 tokens; gradient_checkpointing=False; the precision easyllm "
        "chooses on this machine (bf16 autocast where bf16 matmuls are fast, fp32 otherwise; bf16 "
        "on --gpu)"
    ),
    "trainer-padded": (
        "transformers Trainer with TrainingArguments defaults (fp32, no checkpointing, random "
        "sampling, linear schedule) + DataCollatorForSeq2Seq padding to the batch's longest "
        "example; the examples (input ids and labels, loss on assistant replies only) are "
        "easyllm's; the model's own loss over full logits"
    ),
}


# -- data and measurement helpers (used by the child processes) ------------------------------
def load_chats(rows: int) -> list[dict[str, Any]]:
    """The first `rows` alpaca rows as chats: user = instruction (+ input), assistant = output."""
    records = json.loads(DATA_FILE.read_text())[:rows]
    chats = []
    for record in records:
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        chats.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": record["output"]},
                ]
            }
        )
    return chats


class RecordingCollator:
    """Wraps a trainer's collator and records what each batch holds, in the order batches are made.

    The dataloader builds batch k for step k (a prefetch only makes it earlier), so the k-th
    record describes step k. Real tokens are the examples' own tokens (a packed TRL example is
    already a row of several sequences); trained tokens are labels != -100 after each row's first.
    """

    def __init__(self, collate: Callable) -> None:
        self.collate = collate
        self.batches: list[dict[str, int]] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        labels = batch["labels"]
        self.batches.append(
            {
                "examples": sum(
                    len(e["seq_lengths"]) if "seq_lengths" in e else 1 for e in examples
                ),
                "real_tokens": sum(len(e["input_ids"]) for e in examples),
                "positions": int(batch["input_ids"].numel()),
                "trained_tokens": int((labels[:, 1:] != -100).sum()),
            }
        )
        return batch


class StepClock(TrainerCallback):
    """Times every optimizer step (CUDA synchronized) and the RSS peak before training."""

    def __init__(self, probe: dict[str, Any]) -> None:
        self.probe = probe
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.train_begin = 0.0

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels are asynchronous: time what has finished
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.probe["setup_rss_gib"] = peak_rss_gib()
        self.train_begin = self._now()

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(self._now())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self._now())


def observe_trainers(probe: dict[str, Any]) -> None:
    """Make the first `Trainer.train()` of this process record its batches and time its steps.

    Patching the base class reaches easyllm's, TRL's and the plain Trainer alike without
    depending on how each builds its trainer or collator.
    """
    original = Trainer.train

    def train(self: Trainer, *args: Any, **kwargs: Any):
        if "trainer" not in probe:
            self.data_collator = RecordingCollator(self.data_collator)
            self.clock = StepClock(probe)
            self.add_callback(self.clock)
            probe["trainer"] = self
        return original(self, *args, **kwargs)

    Trainer.train = train


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def device_overrides(gpu: bool) -> dict[str, Any]:
    """Device placement: CUDA with bf16 autocast where the GPU has it, else `use_cpu`.

    `use_cpu=True` is what TrainingArguments asks for before it allows TRL's default bf16=True
    on a machine without a GPU; on CPU each configuration keeps its own precision.
    """
    if not gpu:
        return {"use_cpu": True}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {}


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **LORA)


# -- the four configurations: each builds and runs one trainer --------------------------------
def run_easyllm(
    model_dir: str, chats: list, max_steps: int, gpu: bool, out: str, probe: dict, **forced: Any
) -> None:
    import easyllm.train.compilation
    import easyllm.train.engine
    from easyllm import ModelRunner

    compile_layers = easyllm.train.engine.compiled_layers

    def recording(model, enabled):  # records how many layers easyllm compiled
        probe["compiled_layers"] = (
            len(easyllm.train.compilation.decoder_layers(model)) if enabled else 0
        )
        return compile_layers(model, enabled)

    easyllm.train.engine.compiled_layers = recording
    runner = ModelRunner(model_dir)
    runner.load_data(chats, val_size=0, max_length=MAX_LENGTH)
    runner.train(
        max_steps=max_steps,
        per_device_train_batch_size=BATCH_SIZE,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        output_dir=out,
        disable_tqdm=True,
        logging_steps=1,
        **device_overrides(gpu),
        **forced,
    )


def run_trl(
    model_dir: str, chats: list, max_steps: int, gpu: bool, out: str, probe: dict, *, tuned: bool
) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    placement = device_overrides(gpu)
    from easyllm.train.resources import prefers_bf16

    tuning = (
        {
            "packing": True,
            "packing_strategy": "bfd",
            "gradient_checkpointing": False,
            "bf16": placement.get("bf16", prefers_bf16(torch.device("cpu"))),
        }
        if tuned
        else {}
    )
    args = SFTConfig(
        output_dir=out,
        max_length=MAX_LENGTH,
        per_device_train_batch_size=BATCH_SIZE,
        max_steps=max_steps,
        seed=SEED,
        learning_rate=LEARNING_RATE,
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        **placement,
        **tuning,
    )
    trainer = SFTTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(chats),
        peft_config=lora_config(),
    )
    probe["trl_settings"] = {name: getattr(args, name) for name in TRL_FIELDS}
    probe["trl_settings"]["padding_free (effective)"] = trainer.padding_free
    probe["trl_settings"]["completion_only_loss (effective)"] = trainer.completion_only_loss
    trainer.train()


def run_trainer_padded(
    model_dir: str, chats: list, max_steps: int, gpu: bool, out: str, probe: dict
) -> None:
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        TrainingArguments,
    )

    from easyllm.data.encoding import ChatEncoder
    from easyllm.data.loading import read_source
    from easyllm.modeling import ensure_pad_token
    from easyllm.tasks import TASKS, DataOptions

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    encoder = ChatEncoder(tokenizer)
    ensure_pad_token(tokenizer, model, encoder.end_of_turn_ids)  # as easyllm: pad is not <|im_end|>
    options = DataOptions(val_size=0, seed=SEED, max_length=MAX_LENGTH)
    # easyllm's examples
    train = TASKS.get("sft").prepare(read_source(chats), encoder, options).train
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=BATCH_SIZE,
        max_steps=max_steps,
        seed=SEED,
        learning_rate=LEARNING_RATE,
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        save_strategy="no",
        **device_overrides(gpu),
    )
    torch.manual_seed(SEED)  # LoRA's initial weights
    trainer = Trainer(
        model=get_peft_model(model, lora_config()),
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    trainer.train()


CONFIGS: dict[str, Callable[..., None]] = {
    "easyllm": run_easyllm,
    "easyllm-fp32": lambda *a: run_easyllm(*a, bf16=False),
    "easyllm-eager": lambda *a: run_easyllm(*a, compile=False),
    # the two sides of easyllm's automatic gradient-checkpointing choice, forced
    "easyllm-no-ckpt": lambda *a: run_easyllm(*a, gradient_checkpointing=False),
    "easyllm-ckpt": lambda *a: run_easyllm(*a, gradient_checkpointing=True),
    "trl-default": lambda *a: run_trl(*a, tuned=False),
    "trl-tuned": lambda *a: run_trl(*a, tuned=True),
    "trainer-padded": run_trainer_padded,
}


def child(opts: argparse.Namespace) -> None:
    """Train one configuration and write its measurements as JSON to `opts.result`."""
    from transformers import set_seed

    from easyllm.modeling import resolve_model

    set_seed(SEED)
    start = time.perf_counter()
    probe: dict[str, Any] = {}
    max_steps = opts.warmup + opts.steps
    observe_trainers(probe)
    with tempfile.TemporaryDirectory() as out:
        CONFIGS[opts.run](
            resolve_model(None), load_chats(opts.rows), max_steps, opts.gpu, out, probe
        )
    trainer = probe["trainer"]
    clock, batches = trainer.clock, trainer.data_collator.batches
    if len(clock.ends) != max_steps or len(batches) < max_steps:
        raise RuntimeError(
            f"{opts.run}: {max_steps} steps expected, {len(clock.ends)} timed, "
            f"{len(batches)} batches recorded"
        )
    timed = batches[opts.warmup : max_steps]
    wall = clock.ends[-1] - (clock.ends[opts.warmup - 1] if opts.warmup else clock.train_begin)
    compute = sum(
        end - begin for begin, end in zip(clock.begins[opts.warmup :], clock.ends[opts.warmup :])
    )
    total = lambda key: sum(batch[key] for batch in timed)
    params = list(trainer.model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    # the base model (tied weights once)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    timed_losses = [loss for step, loss in losses if step > opts.warmup]
    window = timed_losses[-opts.loss_window :]
    real = total("real_tokens")
    result = {
        "config": opts.run,
        "device": str(next(trainer.model.parameters()).device),
        "precision": "bf16 autocast" if trainer.args.bf16 else "fp32",
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "torch_threads": torch.get_num_threads(),
        "warmup_steps": opts.warmup,
        "timed_steps": opts.steps,
        "batches_recorded": len(batches),  # max_steps, or one more where the dataloader prefetched
        "examples": total("examples"),
        "trained_tokens": total("trained_tokens"),
        "real_tokens": real,
        "batch_positions": total("positions"),
        "padding_share": 1 - real / max(total("positions"), 1),
        "wall_s": wall,
        "s_per_step": wall / opts.steps,
        "compute_s_per_step": compute / opts.steps,  # on_step_begin -> on_step_end: no data loading
        "trained_tokens_per_s": total("trained_tokens") / wall,
        "real_tokens_per_s": real / wall,
        "base_params": frozen,
        "trainable_params": trainable,
        "flops_6nd_per_s": 6 * frozen * real / wall,
        "flops_4nd_per_s": 4 * frozen * real / wall,
        "peak_rss_gib": peak_rss_gib(),
        "setup_rss_gib": probe.get("setup_rss_gib"),
        "cuda_peak_gib": (
            torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        ),
        "losses": [loss for _, loss in losses],
        "final_loss": statistics.fmean(window) if window else None,
        "process_s": time.perf_counter() - start,
        "trl_settings": probe.get("trl_settings"),
        "compiled_layers": probe.get("compiled_layers"),
    }
    Path(opts.result).write_text(json.dumps(result, indent=2, default=str))


# -- the parent: reference matmul rate, the runs, the report ----------------------------------
def matmul_rate(
    dtype_name: str, gpu: bool, n: int = 2048, repeats: int = 8, rounds: int = 3
) -> float:
    """Best FLOP/s of an n x n matmul in this process (same threads as the children)."""
    device, dtype = ("cuda" if gpu else "cpu"), getattr(torch, dtype_name)
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    a @ b
    sync()
    best = 0.0
    for _ in range(rounds):
        begin = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - begin))
    return best


def run_child(
    name: str, opts: argparse.Namespace, log_dir: Path, index: int
) -> dict[str, Any] | str:
    """Run one configuration in a fresh process: its measurements, or why it failed."""
    result, log = log_dir / f"{index:02d}-{name}.json", log_dir / f"{index:02d}-{name}.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--run",
        name,
        "--result",
        str(result),
        "--steps",
        str(opts.steps),
        "--warmup",
        str(opts.warmup),
        "--rows",
        str(opts.rows),
        "--loss-window",
        str(opts.loss_window),
        *(["--gpu"] if opts.gpu else []),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if not opts.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU runs stay on the CPU even on a GPU machine
    begin = time.perf_counter()
    with log.open("w") as handle:
        try:
            code = subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=opts.child_timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {opts.child_timeout} s"
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        message = f"{name} failed (exit {code}); log {log}:\n{tail}"
        print(message, flush=True)
        return message
    data = json.loads(result.read_text())
    print(
        f"  {name}: {data['trained_tokens_per_s']:.0f} trained tok/s, "
        f"{data['s_per_step']:.1f} s/step, peak RSS {data['peak_rss_gib']:.2f} GiB "
        f"({time.perf_counter() - begin:.0f} s)",
        flush=True,
    )
    return data


def machine(gpu: bool) -> dict[str, Any]:
    import peft
    import transformers
    import trl

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": [f for f in ("avx512_bf16", "amx_bf16") if f in flags],
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if gpu:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


ROWS = (  # (label, key, format)
    ("trained (label) tokens/s", "trained_tokens_per_s", "{:.0f}"),
    ("non-pad tokens/s", "real_tokens_per_s", "{:.0f}"),
    ("padding share of batch positions", "padding_share", "{:.1%}"),
    ("wall time per step (s)", "s_per_step", "{:.2f}"),
    ("compute time per step, no data loading (s)", "compute_s_per_step", "{:.2f}"),
    ("examples per step", "examples_per_step", "{:.1f}"),
    ("trained tokens per step", "trained_per_step", "{:.0f}"),
    ("non-pad tokens per step", "real_per_step", "{:.0f}"),
    ("peak RSS (GiB)", "peak_rss_gib", "{:.2f}"),
    ("RSS peak before training (GiB)", "setup_rss_gib", "{:.2f}"),
    ("CUDA peak allocated (GiB)", "cuda_peak_gib", "{:.2f}"),
    ("model FLOP/s, 6·N·D (GFLOP/s)", "gflops_6nd", "{:.1f}"),
    ("6·N·D as share of matmul rate", "mfu_6nd", "{:.1%}"),
    ("LoRA FLOP/s, 4·N·D (GFLOP/s)", "gflops_4nd", "{:.1f}"),
    ("4·N·D as share of matmul rate", "mfu_4nd", "{:.1%}"),
    ("final loss (mean of last timed steps)", "final_loss", "{:.4f}"),
    ("whole process (s)", "process_s", "{:.0f}"),
)


def derive(run: dict[str, Any], reference_flops: float) -> None:
    steps = run["timed_steps"]
    run["examples_per_step"] = run["examples"] / steps
    run["trained_per_step"] = run["trained_tokens"] / steps
    run["real_per_step"] = run["real_tokens"] / steps
    run["gflops_6nd"], run["gflops_4nd"] = (
        run["flops_6nd_per_s"] / 1e9,
        run["flops_4nd_per_s"] / 1e9,
    )
    run["mfu_6nd"] = run["flops_6nd_per_s"] / reference_flops
    run["mfu_4nd"] = run["flops_4nd_per_s"] / reference_flops


def cell(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def header(
    opts: argparse.Namespace, info: dict, rates: dict, reference: str, command: str
) -> list[str]:
    cores = f"{info['cpu_cores']} cores ({info['torch_threads']} torch threads)"
    load = f"{info['load_before']:.2f} / {info['load_after']:.2f}"
    machine_line = (
        f"Machine: {info['cpu']}, {cores}, {info['memory_gib']:.0f} GiB RAM"
        + (f", GPU {info['gpu']}" if "gpu" in info else "")
        + (f"; CPU bf16 support: {', '.join(info['cpu_bf16'])}" if info["cpu_bf16"] else "")
        + f"; 1-minute load average before / after: {load}  "
    )
    matmuls = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items())
    return [
        "# SFT throughput and memory: easyllm vs TRL vs a plain Trainer",
        "",
        f"Command: `{command}`  ",
        f"Date: {info['date']}  ",
        machine_line,
        (
            f"Versions: python {info['python']}, torch {info['torch']}, "
            f"transformers {info['transformers']}, trl {info['trl']}, peft {info['peft']}  "
        ),
        (
            f"Reference matmul ({opts.matmul_n}x{opts.matmul_n}, measured by the parent): "
            f"{matmuls}; the FLOP/s shares below are of {reference}."
        ),
        "",
        (
            f"Model: built-in SmolLM2-135M-Instruct. Data: first {opts.rows} rows of "
            f"{DATA_FILE.name} as user/assistant chats. Every configuration: LoRA r={LORA['r']}, "
            f"alpha={LORA['lora_alpha']}, dropout 0, all linear layers; batch {BATCH_SIZE}; max "
            f"length {MAX_LENGTH}; learning rate {LEARNING_RATE}; seed {SEED}; {opts.warmup} "
            f"warm-up step(s), then {opts.steps} timed step(s); {opts.repeats} cycle(s) through "
            "the configurations, each run in its own process; values are medians over the cycles."
        ),
        "",
        (
            "How it is measured: tokens are counted from the batches each trainer's collator "
            "really produced (trained = labels != -100 after each row's first position; non-pad = "
            "the examples' own tokens); wall time per step runs from one on_step_end to the next "
            "(data loading included); peak RSS is the child process's ru_maxrss (model loading and "
            "tokenization included). FLOP/s uses the standard 6·N·D (N = base-model parameters, D "
            "= non-pad tokens), which overstates LoRA work: frozen weights get no weight gradient, "
            "so 4·N·D is closer to what must be computed. Neither counts attention, "
            "gradient-checkpointing recomputation, or that easyllm runs the output layer only on "
            "trained positions."
        ),
        "",
        (
            "Losses are comparable only where the same tokens are trained: trl-default trains "
            "every token (prompt and template included), trl-tuned trains every token of about "
            "twice as many examples per step, and easyllm and trainer-padded train the same reply "
            "tokens but draw batches differently (group_by_length vs random)."
        ),
    ]


def summary(runs: dict[str, list]) -> list[str]:
    columns = (
        ("trained tok/s", "trained_tokens_per_s", "{:.0f}"),
        ("non-pad tok/s", "real_tokens_per_s", "{:.0f}"),
        ("padding", "padding_share", "{:.1%}"),
        ("s/step", "s_per_step", "{:.2f}"),
        ("examples/step", "examples_per_step", "{:.1f}"),
        ("peak RSS GiB", "peak_rss_gib", "{:.2f}"),
        ("final loss", "final_loss", "{:.4f}"),
    )
    lines = ["## Summary", "", "| configuration | " + " | ".join(c[0] for c in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for name, config_runs in runs.items():
        cells = [cell(median(config_runs, key), fmt) for _, key, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ours = runs.get("easyllm")
    if ours is None or len(runs) == 1:
        return lines
    keys = ("trained_tokens_per_s", "real_tokens_per_s", "peak_rss_gib", "final_loss")
    lines += [
        "",
        "## Ratios, easyllm / other",
        "",
        "| other | trained tok/s | non-pad tok/s | peak RSS | final loss |",
        "|---|---|---|---|---|",
    ]
    for name, config_runs in runs.items():
        if name != "easyllm":
            pairs = [(median(ours, key), median(config_runs, key)) for key in keys]
            cells = [cell(a / b if a is not None and b else None, "{:.2f}x") for a, b in pairs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def section(name: str, config_runs: list[dict[str, Any]], trl_version: str) -> list[str]:
    first = config_runs[0]
    lines = [
        f"## {name}",
        "",
        f"Settings: {SETTINGS[name]}.  ",
        (
            f"Measured: {first['device']}, {first['precision']}, gradient checkpointing "
            f"{'on' if first['gradient_checkpointing'] else 'off'}, "
            f"{first.get('compiled_layers') or 'no'} layers compiled, "
            f"{first['torch_threads']} threads, N = {first['base_params']:,} base parameters, "
            f"{first['trainable_params']:,} trainable."
        ),
    ]
    if first.get("trl_settings"):
        shown = ", ".join(f"{k}={v!r}" for k, v in first["trl_settings"].items())
        lines[-1] += "  "
        lines.append(f"TRL {trl_version} settings in effect: {shown}.")
    several = len(config_runs) > 1
    titles = [f"run {i + 1}" for i in range(len(config_runs))] + (["median"] if several else [])
    lines += ["", "| metric | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    for label, key, fmt in ROWS:
        values = [cell(run.get(key), fmt) for run in config_runs]
        if several:
            values.append(cell(median(config_runs, key), fmt))
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    losses = ", ".join(f"{loss:.4f}" for loss in first["losses"])
    return [*lines, "", f"Per-step losses (run 1, warm-up included): {losses}"]


def report(
    opts: argparse.Namespace,
    info: dict,
    rates: dict,
    reference: str,
    runs: dict[str, list],
    command: str,
) -> str:
    lines = header(opts, info, rates, reference, command) + [""] + summary(runs)
    for name, config_runs in runs.items():
        lines += ["", *section(name, config_runs, info["trl"])]
    return "\n".join(lines) + "\n"


def parent(opts: argparse.Namespace) -> None:
    if opts.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: torch sees no CUDA device here.")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="sft-throughput-"))
    command = shlex.join(["python", *sys.argv])
    info = machine(opts.gpu)
    info["load_before"] = os.getloadavg()[0]
    dtypes = ["float32", "bfloat16"] if opts.gpu or info["cpu_bf16"] else ["float32"]
    rates = {name: matmul_rate(name, opts.gpu, opts.matmul_n) for name in dtypes}
    # On --gpu every configuration runs bf16 autocast: compare with the bf16 matmul there.
    reference = "bfloat16" if opts.gpu and torch.cuda.is_bf16_supported() else "float32"
    shown = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items())
    print(f"matmul: {shown}; child logs in {log_dir}", flush=True)
    runs: dict[str, list] = {name: [] for name in opts.configs}
    failures: list[str] = []
    index = 0
    for repeat in range(opts.repeats):
        print(f"cycle {repeat + 1}/{opts.repeats}", flush=True)
        for name in opts.configs:
            index += 1
            run = run_child(name, opts, log_dir, index)
            if isinstance(run, str):
                failures.append(run)
            else:
                derive(run, rates[reference])
                runs[name].append(run)
    info["load_after"] = os.getloadavg()[0]
    runs = {name: config_runs for name, config_runs in runs.items() if config_runs}
    payload = {
        "command": command,
        "machine": info,
        "matmul_flops": rates,
        "reference": reference,
        "options": vars(opts),
        "failures": failures,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = report(opts, info, rates, reference, runs, command)
    if failures:
        text += "\n## Failed runs\n\n" + "\n\n".join(f"```\n{f}\n```" for f in failures) + "\n"
    (out / "RESULTS.md").write_text(text)
    print(text)
    print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=6, help="timed optimizer steps per configuration"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=1, help="cycles through all configurations")
    parser.add_argument("--rows", type=int, default=256, help="alpaca rows used as training data")
    parser.add_argument(
        "--loss-window", type=int, default=3, help="final loss = mean of this many last steps"
    )
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=CONFIG_ORDER)
    parser.add_argument(
        "--gpu", action="store_true", help="run on CUDA, every configuration in bf16 autocast"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent), help="folder for RESULTS.md"
    )
    parser.add_argument("--matmul-n", type=int, default=2048, help="size of the reference matmul")
    parser.add_argument(
        "--child-timeout", type=int, default=1800, help="seconds before a run is killed"
    )
    parser.add_argument("--run", choices=CONFIG_ORDER, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    if options.run:
        child(options)
    else:
        parent(options)
