"""The runner's steps with any task, as its `capabilities` decide.

Its tokenizer, chat template, encoder and model when the runner is built (the model again when
a method or the data changes it), its prepared data in load_data(), its rows in preview(). Chat
tasks get a template; `model_from_data` tasks may wait for the data (classify: the labels)
before their model exists.
"""

from __future__ import annotations

from typing import Any, cast

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapters import keep_4bit_weights_trainable
from ..data.encoding import ChatEncoder
from ..data.loading import DataSource, describe_source, is_collection, read_source
from ..data.prepared import DataOptions, PreparedData
from ..data.preview import Preview, spans
from ..data.templates import ResolvedTemplate, resolve_template
from ..errors import UsageError
from ..modeling import ensure_pad_token, load_tokenizer, model_type
from ..train.distributed import main_process_first
from .base import BuildsModelFromData, ModelLoading, Previews, Task


def setup_tokenizer(
    task: Task, tokenizer_source: str, model_source: str, template: str | None, trust_remote: bool
) -> tuple[PreTrainedTokenizerBase, ResolvedTemplate | None, ChatEncoder | None]:
    """The tokenizer, and for a task that renders chats, its chat template (set) and encoder.

    Generative tasks need one too: generate() renders prompts with it. The template is set on the
    tokenizer so that it is saved with it, and a reloaded model chats the same.
    """
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote)
    if not (task.capabilities.chat_template or task.capabilities.generative):
        return tokenizer, None, None
    resolved = resolve_template(
        tokenizer, template=template, model_type=model_type(model_source, trust_remote)
    )
    tokenizer.chat_template = resolved.source
    return tokenizer, resolved, ChatEncoder(tokenizer)


def model_info(
    task: Task,
    loading: ModelLoading,
    model: PreTrainedModel | None,
    data: PreparedData | None,
    saved: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """What a `model_from_data` task's model needs (None: not known yet); {} for every other task.

    `saved`: what a save recorded; else the model's own (once it exists), else the data's.
    """
    if not task.capabilities.model_from_data:
        return {}
    if saved is not None:
        return saved
    builds = cast(BuildsModelFromData, task)
    return builds.saved_info(model) if model is not None else builds.model_info(loading, data)


def load_task_model(
    task: Task,
    loading: ModelLoading,
    info: dict[str, Any] | None,
    tokenizer: PreTrainedTokenizerBase,
    encoder: ChatEncoder | None,
) -> PreTrainedModel | None:
    """The task's model (None while `info` is not known), with a pad token that ends no turn."""
    model = task.load_model(loading, info) if info is not None else None
    end_of_turn = encoder.end_of_turn_ids if encoder else [tokenizer.eos_token_id]
    ensure_pad_token(tokenizer, model, [t for t in end_of_turn if t is not None])
    if model is not None:
        keep_4bit_weights_trainable(model)  # before any generate() can repack them
    return model


def prepare_data(
    task: Task,
    source: DataSource,
    tokenizer: PreTrainedTokenizerBase,
    encoder: ChatEncoder | None,
    template: ResolvedTemplate | None,
    options: DataOptions,
) -> PreparedData:
    """`source` read and prepared by the task; the report names the chat template that rendered it.

    With several processes the main one prepares first and the others reuse its cache.
    """
    with main_process_first():
        data = task.prepare(read_source(source), tokenizer, encoder, options)
    if is_collection(
        source
    ):  # which files of a folder, which split of a DatasetDict, what was not read
        data.report.source = describe_source(source)
    if template is not None and task.capabilities.chat_template:
        data.report.template = f"{template.name} ({template.reason})"
    return data


def preview_rows(
    task: Task,
    task_name: str,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    n: int,
    split: str,
) -> Preview:
    """The first `n` encoded rows of `split` ("train", else validation) as the model sees them."""
    if not task.capabilities.previews:
        raise UsageError(
            f"preview() shows tokenized examples; task '{task_name}' tokenizes at training time."
        )
    dataset = data.train if split == "train" else data.validation
    if dataset is None:
        raise UsageError(
            "There is no validation split: load_data(..., val_size=0.1) holds one out."
        )
    previews = cast(Previews, task)
    shown = [previews.preview_ids(dataset[i]) for i in range(min(n, len(dataset)))]
    return Preview([spans(tokenizer, *ids) for ids in shown])
