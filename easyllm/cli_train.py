"""`easyllm train`: one table of settings gives the flags, checks the YAML file, and runs.

Flags override the YAML file's values. Every value is checked before any model is loaded, and
every problem is reported at once. torch and transformers are imported only to run a command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, with_suggestions

RUNNER_KEYS = ("model", "task", "method", "template", "trust_remote_code", "seed")
RUN_KEYS = ("resume", "overwrite")
DATA_KEYS = (
    "data",
    "val_size",
    "max_length",
    "input_key",
    "output_key",
    "columns",
    "on_bad_rows",
    "train_on",
    "on_control_tokens",
)


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number above 0")
    return value


def val_size(text: str) -> float | int:
    """A fraction below 1 ("0.1") or a count of rows ("20"); 0 holds out nothing."""
    value = _number(text, int) if text.strip().isdigit() else _number(text, float)
    if value < 0 or (isinstance(value, float) and value >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction in [0, 1) or a row count")
    return value


def columns(text: str) -> dict[str, str]:
    """`prompt=q,completion=a` -> {"prompt": "q", "completion": "a"}."""
    pairs = [part.partition("=") for part in text.split(",") if part.strip()]
    if not pairs or any(not key.strip() or not sep or not col.strip() for key, sep, col in pairs):
        raise argparse.ArgumentTypeError(
            f"{text!r}: write KEY=COLUMN pairs, e.g. prompt=q,completion=a"
        )
    return {key.strip(): col.strip() for key, _, col in pairs}


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        name = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None


@dataclass(frozen=True)
class Setting:
    """One train setting: its Python/YAML name, how a flag's text is read, and its help."""

    key: str
    kind: Callable[[str], Any] | type[bool]
    help: str
    flag: str = ""  # default: --key-with-dashes

    @property
    def option(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")


NO_EVAL_HELP = (
    "train on every row and skip the end-of-training evaluation (the same as --val-size 0)"
)
SETTINGS = (
    Setting("model", str, "hub id, local folder, or built-in name (default: the built-in model)"),
    Setting("data", str, "training data: .jsonl, .json, .csv, .parquet, .txt or a folder"),
    Setting("task", str, "task name (default: sft)"),
    Setting("method", str, "lora (default), qlora, full, or another registered method"),
    Setting(
        "num_train_epochs", positive_float, "number of training epochs (default 3)", "--epochs"
    ),
    Setting("max_steps", positive_int, "stop after this many optimizer steps (overrides --epochs)"),
    Setting("learning_rate", positive_float, "peak learning rate (default: the method's)"),
    Setting("val_size", val_size, "rows held out for evaluation: a fraction or a count (0.1)"),
    Setting("input_key", str, "the column holding the prompt (with --output-key)"),
    Setting("output_key", str, "the column holding the reply (with --input-key)"),
    Setting("columns", columns, "a row shape's keys in your columns, e.g. prompt=q,completion=a"),
    Setting("output_dir", str, "where to write the run (default: a fresh folder in easyllm-runs/)"),
    Setting("trust_remote_code", bool, "run the model's own code from its folder or the Hub"),
    Setting("resume", bool, "continue the newest checkpoint of the run"),
    Setting("overwrite", bool, "replace a run already in --output-dir"),
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The train flags, from SETTINGS; a flag not given is absent, so the YAML value stays."""
    parser.add_argument(
        "config",
        nargs="?",
        help="a YAML file whose keys are ModelRunner/load_data/train arguments; "
        "the flags given override its values",
    )
    held_out = parser.add_mutually_exclusive_group()
    for setting in SETTINGS:
        target = held_out if setting.key == "val_size" else parser
        how: dict[str, Any] = (
            {"action": "store_true"}
            if setting.kind is bool
            else {"type": setting.kind, "metavar": setting.option[2:].upper().replace("-", "_")}
        )
        target.add_argument(
            setting.option, dest=setting.key, default=argparse.SUPPRESS, help=setting.help, **how
        )
    held_out.add_argument(
        "--no-eval",
        dest="val_size",
        action="store_const",
        const=0,
        default=argparse.SUPPRESS,
        help=NO_EVAL_HELP,
    )


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The YAML file's settings (checked), then the flags given, which override them."""
    config = config_from_yaml(Path(args.config)) if args.config else {}
    flags = {s.key: getattr(args, s.key) for s in SETTINGS if hasattr(args, s.key)}
    return {**config, **flags}


def config_from_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config; its keys are ModelRunner, load_data and train() arguments."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"Config file not found: {path} (working directory: {Path.cwd()}).")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{where}: not valid YAML ({problem}). Write one `key: value` per line; quote values "
            "that contain ': ' or start with a special character."
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    problems = []
    for setting in SETTINGS:
        if setting.key in loaded:
            try:
                loaded[setting.key] = _checked(setting, loaded[setting.key], path)
            except ConfigError as exc:
                problems.append(str(exc))
    problems += problems_in(loaded, path)
    if problems:
        raise ConfigError(" ".join(problems))
    return loaded


def _checked(setting: Setting, value: Any, path: Path) -> Any:
    """A YAML value of a table setting, read as its flag's text would be (with the same checks)."""
    where = f"{setting.key}: {value!r} in {path}"
    if setting.key == "data" or (setting.kind is str and value is None):
        return value  # data: any load_data source; null: the default (e.g. the built-in model)
    if setting.kind is bool or setting.kind is str:
        if not isinstance(value, setting.kind):
            expected = "true or false" if setting.kind is bool else "text"
            raise ConfigError(f"{where}: expected {expected}.")
        return value
    if setting.kind is columns and isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str) and setting.kind is not columns:
        raise ConfigError(f"{where} is text, not a number. {_number_hint(value)}")
    try:
        return setting.kind(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{setting.key} in {path}: {exc}") from None


def _number_hint(text: Any) -> str:
    try:
        float(str(text))
    except ValueError:
        return "Write a number."
    mantissa, _, exponent = str(text).lower().partition("e")
    # YAML 1.1 (PyYAML) reads 5e-4 as a string: a float needs a dot in the mantissa.
    fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else text
    return f"YAML reads it as a string: write {fixed} (unquoted)."


def problems_in(config: dict[str, Any], path: Path) -> list[str]:
    """What is wrong with a YAML file's keys and TrainingArguments values (the table's are
    checked by _checked)."""
    from transformers import TrainingArguments

    from .train.settings import SETTINGS_FIELDS, TRAINER_FIELDS

    valid = RUNNER_KEYS + RUN_KEYS + DATA_KEYS + SETTINGS_FIELDS + TRAINER_FIELDS
    problems = []
    for key in config:
        if key not in valid:
            problems.append(with_suggestions(key, valid))
    if problems:  # the same "did you mean" as train(**settings) (train.settings.build_settings)
        own = ", ".join(dict.fromkeys(RUNNER_KEYS + RUN_KEYS + DATA_KEYS + SETTINGS_FIELDS))
        unknown = f"Unknown setting(s): {', '.join(problems)}. Valid: {own}, "
        problems = [unknown + "or any transformers.TrainingArguments field."]
    defaults = {f.name: f.default for f in TrainingArguments.__dataclass_fields__.values()}
    table = {setting.key for setting in SETTINGS}
    for key, value in config.items():
        default = defaults.get(key) if key not in table else None
        if isinstance(default, bool) and not isinstance(value, bool):
            problems.append(f"{key}: {value!r} in {path}: expected true or false.")
        elif isinstance(default, (int, float)) and isinstance(value, (str, bool)):
            problems.append(f"{key}: {value!r} in {path} is not a number. {_number_hint(value)}")
    report_to = config.get("report_to")
    reports = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "tensorboard" in reports and not _installed("tensorboard", "tensorboardX"):
        problems.append("report_to='tensorboard' needs TensorBoard: pip install tensorboard")
    return problems


def _missing(config: dict[str, Any]) -> list[str]:
    """Data a run would find missing only after loading its model."""
    problems = []
    if "data" not in config:
        problems.append("No training data: give --data FILE (or `data:` in the YAML file).")
    elif isinstance(config["data"], str) and not Path(config["data"]).exists():
        problems.append(f"Data file not found: {config['data']} (working directory: {Path.cwd()}).")
    return problems


def _installed(*modules: str) -> bool:
    return any(importlib.util.find_spec(name) is not None for name in modules)


def run_training(config: dict[str, Any]) -> None:
    """Split one flat config into the runner's, load_data's and train()'s arguments, and run."""
    problems = _missing(config)
    if problems:
        raise ConfigError(" ".join(problems))
    from .runner import ModelRunner
    from .tasks import TASKS
    from .train.settings import TrainSettings, build_settings

    runner_args = {k: config[k] for k in RUNNER_KEYS if k in config}
    data_args = {k: config[k] for k in DATA_KEYS if k in config and k != "data"}
    train_args = {k: v for k, v in config.items() if k not in RUNNER_KEYS + DATA_KEYS}
    TASKS.get(runner_args.get("task", "sft"))  # an unknown task or method: before the model
    settings = {k: v for k, v in train_args.items() if k not in RUN_KEYS}
    build_settings(TrainSettings(method=runner_args.get("method", "lora")), settings)
    runner = ModelRunner(runner_args.pop("model", None), **runner_args)
    runner.load_data(config["data"], **data_args)
    result = runner.train(**train_args)
    print(json.dumps(result.metrics, indent=2))
    print(f"Saved in {result.output_dir}")


def cmd_train(args: argparse.Namespace) -> None:
    run_training(train_config(args))
