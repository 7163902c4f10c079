"""The README.md model card written beside every save: what was trained, how, and how to use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..modeling import public_model_name

# The project's documentation, the `Documentation` entry of pyproject.toml's [project.urls] (a test
# keeps the two equal). Not a PyPI page: the PyPI name `easyllm` belongs to another project.
DOCS_URL = "https://github.com/easyllm-sdk/easyllm/tree/main/docs"

_SETTINGS_SHOWN = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "packing")
_TRAINER_SHOWN = (
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
)


def model_card(
    info: dict[str, Any],
    settings: dict[str, Any],
    metrics: dict[str, Any],
    repo_id: str | None = None,
    has_loss_plot: bool = False,
) -> str:
    """Markdown with YAML metadata the Hugging Face Hub reads (base_model, library_name, tags)."""
    base = public_model_name(info["base_model"]) if info.get("base_model") else None
    shown = {k: v for k, v in settings.items() if k in _SETTINGS_SHOWN + _TRAINER_SHOWN}
    lines = [
        "---",
        yaml.safe_dump(_metadata(info, settings, base), sort_keys=True).strip(),
        "---",
        "",
        f"# {repo_id or 'Fine-tuned model'}",
        "",
        f"Fine-tuned with [easyllm]({DOCS_URL}) ({info['task']}, {info['method']})"
        + (f" from `{base}`." if base else "."),
        "",
        "## Training settings",
        "",
        *[f"- `{key}`: {value}" for key, value in sorted(shown.items())],
        "",
    ]
    if metrics:
        lines += _results(metrics)
    if has_loss_plot:
        lines += ["![loss curve](loss.png)", ""]
    lines += _usage(repo_id, with_peft=bool(info.get("adapter") and base))
    return "\n".join(lines)


def _metadata(info: dict[str, Any], settings: dict[str, Any], base: str | None) -> dict[str, Any]:
    """The card's YAML header: what the Hub shows and filters by."""
    meta: dict[str, Any] = {
        "library_name": "peft" if info.get("adapter") else "transformers",
        "tags": ["easyllm", info["task"], info["method"]],
        "license": settings.get("license") or "other",
    }
    if base and is_hub_id(base):  # the Hub links base_model: a local folder's name is not one
        meta["base_model"] = base
    if settings.get("datasets"):
        meta["datasets"] = list(settings["datasets"])
    return meta


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hugging Face Hub id ("org/model"), not a local path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _results(metrics: dict[str, Any]) -> list[str]:
    """The metrics as a Markdown table, floats to 4 significant digits."""
    return [
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
        *[
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
        ],
        "",
    ]


def _usage(repo_id: str | None, *, with_peft: bool) -> list[str]:
    """How to load the model: with easyllm, and (for an adapter of a known base) with peft."""
    folder = repo_id or "./this-folder"
    name = repo_id or "this model"
    lines = [
        "## Usage",
        "",
        "With easyllm:",
        "",
        "```python",
        "from easyllm import ModelRunner",
        f"runner = ModelRunner.load({folder!r})  # a local folder or a download of {name}",
        'print(runner.generate("Hello!"))',
        "```",
        "",
    ]
    if with_peft:
        lines += [
            "With transformers and peft:",
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            f"model = AutoPeftModelForCausalLM.from_pretrained({folder!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
            "```",
            "",
        ]
    return lines


def write_model_card(folder: Path, text: str) -> None:
    (folder / "README.md").write_text(text)
