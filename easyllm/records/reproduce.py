"""One file in the run folder that says how to get this run again: reproduce.json.

A run is reproducible when everything that decides it is written down: the model and its
revision, the data (by fingerprint of its encoded rows), the tokenizer and chat template, every
setting and the TrainingArguments they became (some defaults depend on the hardware), the seed,
the library versions, and the command. The record ends with a Python snippet that re-runs it.
Nothing secret is written: tokens in the command line or the environment are redacted.

>>> write_reproduction_record(run.path, model_name="...", ...)  # doctest: +SKIP
PosixPath('easyllm-runs/.../reproduce.json')
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.prepared import DataOptions
from ..files import write_text_atomic
from ..fingerprints import dataset_fingerprint, digest, tokenizer_fingerprint
from ..train.settings import SETTINGS_FIELDS, TrainSettings
from ..version import __version__
from .drift import template_fingerprint

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from ..data.prepared import PreparedData
    from ..data.templates import ResolvedTemplate

REPRODUCE_FILE = "reproduce.json"
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "tokenizers",
    "safetensors",
    "numpy",
)
REDACTED = "<redacted>"
_TOKEN_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_HUB_TOKEN",
    "HF_API_TOKEN",
    "WANDB_API_KEY",
)
_TOKEN_PATTERN = re.compile(r"\b(hf|api_org)_[A-Za-z0-9]{16,}\b")
_SECRET_OPTION = re.compile(r"^--?[\w-]*(token|key|secret|password)[\w-]*$", re.IGNORECASE)


def reproduction_record(
    *,
    model_name: str,
    model_source: str,
    task: str,
    settings: TrainSettings,
    seed: int,
    data: PreparedData,
    tokenizer,
    template: ResolvedTemplate | None = None,
    manifest: dict[str, Any] | None = None,
    data_path: str | os.PathLike | None = None,
    data_options: DataOptions | None = None,
    training_arguments: TrainingArguments | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> dict[str, Any]:
    """Everything that decides a run, as a JSON-serialisable dict (`write_reproduction_record`)."""
    chosen = {**{k: getattr(settings, k) for k in SETTINGS_FIELDS}, **settings.trainer_args}
    manifest = manifest or {}  # train()'s resume manifest: its fingerprints are not computed again
    fingerprints = manifest.get("fingerprints") or {}
    template_arg = _template_argument(template)
    arguments = training_arguments.to_dict() if training_arguments is not None else None
    record: dict[str, Any] = {
        "easyllm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": redact_argv(sys.argv),
        "environment": environment(),
        "model": {
            "name": model_name,
            "source": model_source,
            "revision": revision,
            "trust_remote_code": trust_remote_code,
        },
        "task": task,
        "method": settings.method,
        "seed": seed,
        "settings": json.loads(json.dumps(chosen, default=str)),
        "training_arguments": arguments,
        "data": _data_record(data, data_path, data_options, manifest.get("train_fingerprint")),
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "size": len(tokenizer),
            "fingerprint": fingerprints.get("tokenizer") or tokenizer_fingerprint(tokenizer),
        },
        "template": _template_record(template, tokenizer),
        "fingerprints": fingerprints or None,  # what train(resume=True) checks
    }
    record["reproduce"] = rerun_snippet(
        model_name, task, settings, seed, template_arg, data_path, data_options, trust_remote_code
    )
    return record


def write_reproduction_record(folder: str | os.PathLike, **details: Any) -> Path:
    """Write reproduce.json into `folder`, whole or not at all (`details`: reproduction_record)."""
    text = redact(json.dumps(reproduction_record(**details), indent=2, default=str) + "\n")
    return write_text_atomic(Path(folder) / REPRODUCE_FILE, text)


def cached_revision(source: str) -> str | None:
    """The commit of a hub model as the local Hugging Face cache holds it; None for a folder."""
    if Path(source).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(source, "config.json")
    if not isinstance(path, str) or "/snapshots/" not in path:
        return None
    return path.split("/snapshots/", 1)[1].split("/", 1)[0]


def environment() -> dict[str, Any]:
    """Python, platform, the accelerator and the versions of the libraries a run depends on."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cuda": torch.version.cuda,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def rerun_snippet(
    model_name: str,
    task: str,
    settings: TrainSettings,
    seed: int,
    template: str | None,
    data_path: str | os.PathLike | None,
    data_options: DataOptions | None,
    trust_remote_code: bool = False,
) -> str:
    """Python that trains this run again (into a new folder under easyllm-runs/)."""
    runner_args = {
        "task": task,
        "method": settings.method,
        "template": template,
        "seed": seed,
        "trust_remote_code": trust_remote_code or None,
    }
    data_args = _changed(data_options, DataOptions(seed=seed)) if data_options is not None else {}
    defaults = TrainSettings(method=settings.method)
    train_args = {
        k: getattr(settings, k)
        for k in SETTINGS_FIELDS
        if k not in ("method", "output_dir") and getattr(settings, k) != getattr(defaults, k)
    }
    train_args.update({k: v for k, v in settings.trainer_args.items() if k != "output_dir"})
    data = repr(str(data_path)) if data_path is not None else "rows"
    unknown = "  # + the load_data() options used (not recorded)" if data_options is None else ""
    lines = [
        "from easyllm import ModelRunner",
        "",
        f"runner = ModelRunner({_call(model_name, runner_args)})",
        f"runner.load_data({_call(data, data_args, literal=False)}){unknown}",
        f"runner.train({_call(None, train_args)})",
    ]
    if data_path is None:
        lines.insert(
            2, "rows = ...  # the in-memory rows this run was given (data.fingerprints says which)"
        )
    return "\n".join(lines) + "\n"


def redact_argv(argv: list[str]) -> list[str]:
    """The command line, with the values of --token/--key/... and anything token-like hidden."""
    shown, hide_next = [], False
    for argument in argv:
        option, equals, _ = argument.partition("=")
        if hide_next:
            shown.append(REDACTED)
        elif equals and _SECRET_OPTION.match(option):
            shown.append(f"{option}={REDACTED}")
        else:
            shown.append(argument)
        hide_next = not equals and bool(_SECRET_OPTION.match(argument))
    return [redact(argument) for argument in shown]


def redact(text: str) -> str:
    """`text` with the environment's tokens and anything shaped like a Hugging Face token hidden."""
    for variable in _TOKEN_VARIABLES:
        secret = os.environ.get(variable, "")
        if len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return _TOKEN_PATTERN.sub(REDACTED, text)


# -- internals -----------------------------------------------------------------------------------
def _template_record(template: ResolvedTemplate | None, tokenizer) -> dict[str, Any] | None:
    """Which chat template rendered the run, why, and how it renders (None: the task has none)."""
    if template is None:
        return None
    return {
        "name": template.name,
        "reason": template.reason,
        "fingerprint": digest(template.source),
        "rendering": template_fingerprint(tokenizer),
    }


def _data_record(
    data: PreparedData, data_path, options: DataOptions | None, train_fingerprint: str | None = None
) -> dict[str, Any]:
    report, validation = data.report, data.validation
    return {
        "source": str(data_path) if data_path is not None else report.source,
        "rows": report.rows,
        "formats": report.formats,
        "train_examples": len(data.train),
        "validation_examples": len(data.validation) if data.validation is not None else 0,
        "max_length": data.max_length,
        "options": dataclasses.asdict(options) if options is not None else None,
        "fingerprints": {
            "train": train_fingerprint or dataset_fingerprint(data.train),
            "validation": dataset_fingerprint(validation) if validation is not None else None,
        },
    }


def _template_argument(template: ResolvedTemplate | None) -> str | None:
    """What template= gets the same template: None (the tokenizer's own), else a name or Jinja."""
    if template is None or template.name == "tokenizer":
        return None
    return template.source if template.name == "custom" else template.name


def _changed(options: DataOptions, defaults: DataOptions) -> dict[str, Any]:
    return {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(options)
        if getattr(options, f.name) != getattr(defaults, f.name)
    }


def _call(first: str | None, keywords: dict[str, Any], *, literal: bool = True) -> str:
    """Arguments of a call: `first` (repr'd when literal) then keywords whose value is not None."""
    parts = [] if first is None else [repr(first) if literal else first]
    parts += [f"{key}={value!r}" for key, value in keywords.items() if value is not None]
    return ", ".join(parts)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
