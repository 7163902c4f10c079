"""`easyllm` on the command line: a thin layer that parses arguments and calls ModelRunner.

    easyllm train --model M --data F [--task sft] [--method lora] [--epochs 3] [--output-dir D]
    easyllm train config.yaml                 # the same keys as the Python arguments
    easyllm generate RUN_DIR --prompt "..."   easyllm chat RUN_DIR
    easyllm eval RUN_DIR --data F             easyllm export RUN_DIR --merge OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, EasyLLMError

RUNNER_KEYS = ("model", "task", "method", "template", "trust_remote_code", "seed")
RUN_KEYS = ("resume", "overwrite")
DATA_KEYS = ("data", "val_size", "max_length", "input_key", "output_key", "columns", "on_bad_rows",
             "train_on", "on_control_tokens")


def _runner(run_dir: str):
    from .runner import ModelRunner

    return ModelRunner.load(run_dir)


def config_from_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config; its keys are ModelRunner, load_data and train() arguments."""
    import yaml

    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded


def run_training(config: dict[str, Any]) -> None:
    """Split one flat config into the runner's, load_data's and train()'s arguments, and run."""
    from .config import SETTINGS_FIELDS, TRAINER_FIELDS
    from .runner import ModelRunner

    unknown = [k for k in config if k not in RUNNER_KEYS + RUN_KEYS + DATA_KEYS + SETTINGS_FIELDS + TRAINER_FIELDS]
    if unknown:
        raise ConfigError(
            f"Unknown setting(s): {', '.join(unknown)}. Valid: "
            f"{', '.join(RUNNER_KEYS + RUN_KEYS + DATA_KEYS + SETTINGS_FIELDS)}, "
            "or any transformers.TrainingArguments field."
        )
    if "data" not in config:
        raise ConfigError("No training data: give --data FILE (or `data:` in the YAML file).")
    runner_args = {k: config[k] for k in RUNNER_KEYS if k in config}
    data_args = {k: config[k] for k in DATA_KEYS if k in config and k != "data"}
    train_args = {k: v for k, v in config.items() if k not in RUNNER_KEYS + DATA_KEYS}
    runner = ModelRunner(runner_args.pop("model", None), **runner_args)
    runner.load_data(config["data"], **data_args)
    result = runner.train(**train_args)
    print(json.dumps(result.metrics, indent=2))
    print(f"Saved in {result.output_dir}")


def cmd_train(args: argparse.Namespace) -> None:
    if args.config:
        config = config_from_yaml(Path(args.config))
    else:
        config = {"model": args.model, "data": args.data, "task": args.task, "method": args.method,
                  "num_train_epochs": args.epochs, "output_dir": args.output_dir}
    config.update({k: True for k in ("resume", "overwrite") if getattr(args, k)})
    run_training({k: v for k, v in config.items() if v is not None})


def cmd_generate(args: argparse.Namespace) -> None:
    print(_runner(args.run_dir).generate(args.prompt, max_new_tokens=args.max_new_tokens, system=args.system))


def cmd_chat(args: argparse.Namespace) -> None:
    runner = _runner(args.run_dir)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    print("Chatting with", args.run_dir, "(empty line or Ctrl-D to quit)")
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), ""):
        text = line.strip()
        if not text:
            break
        history.append({"role": "user", "content": text})
        reply = ""
        for piece in runner.stream(history, max_new_tokens=args.max_new_tokens):
            print(piece, end="", flush=True)
            reply += piece
        print()
        history.append({"role": "assistant", "content": reply.strip()})


def cmd_eval(args: argparse.Namespace) -> None:
    print(json.dumps(_runner(args.run_dir).evaluate(args.data), indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    print(f"Merged weights written to {_runner(args.run_dir).merge(args.merge)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easyllm", description="Fine-tune a language model in three lines.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    train = add("train", cmd_train, "Fine-tune a model on a data file, or as a YAML config says.")
    train.add_argument("config", nargs="?", help="a YAML file whose keys are ModelRunner/load_data/train arguments")
    train.add_argument("--model", help="hub id, local folder, or built-in name (default: the built-in model)")
    train.add_argument("--data", help="training data: .jsonl, .json, .csv, .parquet, .txt or a folder")
    train.add_argument("--task", help="task name (default: sft)")
    train.add_argument("--method", choices=["lora", "qlora", "full"], help="default: lora")
    train.add_argument("--epochs", type=float, help="number of training epochs")
    train.add_argument("--output-dir", help="where to write the run (default: a fresh folder in easyllm-runs/)")
    train.add_argument("--resume", action="store_true", help="continue the newest checkpoint of the run")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")

    for name, handler, help_text in (("generate", cmd_generate, "Answer one prompt with a trained run."),
                                     ("chat", cmd_chat, "Chat with a trained run, streaming the replies.")):
        sub = add(name, handler, help_text)
        sub.add_argument("run_dir", help="a folder written by train() or save()")
        if name == "generate":
            sub.add_argument("--prompt", required=True)
        sub.add_argument("--system", help="a system prompt")
        sub.add_argument("--max-new-tokens", type=int, default=256)

    evaluate = add("eval", cmd_eval, "Held-out metrics of a trained run on a data file.")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", required=True)

    export = add("export", cmd_export, "Merge a LoRA run into full-precision weights.")
    export.add_argument("run_dir")
    export.add_argument("--merge", required=True, metavar="OUT_DIR", help="folder for the merged model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except EasyLLMError as exc:
        print(f"easyllm: error: {exc}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
