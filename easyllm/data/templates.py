"""Named chat templates, and the rule that picks the one a model is trained with.

A template is Jinja, exactly what `tokenizer.chat_template` holds. `resolve_template` prefers,
in order: the template the user names or writes; the tokenizer's own (the model was trained on
it); the registered template of the model's family; and `plain`, so that even a base model with
no template learns where a reply ends. Each template is one registration; adding one is a .jinja
file in easyllm/templates/ and a `register_template` line.

>>> resolve_template(None, template="chatml").reason
"registered template 'chatml' (template='chatml')"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..registry import Registry

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class ChatTemplate:
    """A registered template: its Jinja source and where it comes from."""

    name: str
    source: str
    origin: str


@dataclass(frozen=True)
class ResolvedTemplate:
    """The template chosen for a model, and a sentence saying why (shown in reports)."""

    name: str  # a registered name, "tokenizer" (its own, unregistered) or "custom" (Jinja given)
    source: str
    reason: str


TEMPLATES: Registry[ChatTemplate] = Registry("chat template")
# config.model_type -> template name, for tokenizers that ship no template. Only unambiguous
# families: "llama" covers Llama 2 and Llama 3, whose formats differ, so it maps to nothing.
MODEL_TYPE_TEMPLATES: Registry[str] = Registry("model type")


def register_template(
    name: str, source: str, *, origin: str, model_types: tuple[str, ...] = ()
) -> ChatTemplate:
    """Register Jinja `source` as `name`, used for tokenizers of `model_types` that have none."""
    template = TEMPLATES.register(name, ChatTemplate(name, source, origin))
    for model_type in model_types:
        MODEL_TYPE_TEMPLATES.register(model_type, name)
    return template


def template_file(filename: str) -> str:
    """The text of a template shipped in easyllm/templates/."""
    return (TEMPLATE_DIR / filename).read_text(encoding="utf-8")


def is_jinja(template: str) -> bool:
    """A template string is Jinja when it has a tag or an expression; otherwise it is a name."""
    return "{%" in template or "{{" in template


def resolve_template(
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    template: str | None = None,
    model_type: str | None = None,
) -> ResolvedTemplate:
    """Pick the chat template: `template=` (name or Jinja), the tokenizer's, the family's, `plain`.

    Raises UnknownNameError, listing the registered names, for a `template` that is neither.
    """
    if template is not None:
        if is_jinja(template):
            return ResolvedTemplate("custom", template, "the Jinja template passed as template=")
        chosen = TEMPLATES.get(template)
        reason = f"registered template '{chosen.name}' (template={template!r})"
        return ResolvedTemplate(chosen.name, chosen.source, reason)
    own = _own_template(tokenizer)
    if own:
        same = next((t.name for t in TEMPLATES if t.source == own), None)
        note = f" (the same as registered '{same}')" if same else ""
        return ResolvedTemplate(
            same or "tokenizer", own, f"the tokenizer's own chat template{note}"
        )
    if model_type and model_type in MODEL_TYPE_TEMPLATES:
        chosen = TEMPLATES.get(MODEL_TYPE_TEMPLATES.get(model_type))
        return ResolvedTemplate(
            chosen.name,
            chosen.source,
            f"registered template '{chosen.name}' for model_type '{model_type}'",
        )
    family = (
        f"model_type '{model_type}' has no registered template"
        if model_type
        else "no model_type is known"
    )
    return ResolvedTemplate(
        "plain",
        TEMPLATES.get("plain").source,
        "the 'plain' instruction/response template: the tokenizer has no chat template and "
        f"{family}",
    )


def _own_template(tokenizer: PreTrainedTokenizerBase | None) -> str | None:
    """The tokenizer's template; of several named ones (a dict), the "default"."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, Mapping):
        own = own.get("default")
    return own if isinstance(own, str) and own.strip() else None


# -- the registered templates ----------------------------------------------------------------
# llama3, gemma, phi3, qwen2_5 and qwen3 .jinja are byte-identical copies of the original model
# templates shipped by TRL (huggingface/trl, trl/chat_templates/, Apache-2.0), so that tools
# which recognise a template by its text still do. llama2 and mistral are the templates of
# meta-llama/Llama-2-7b-chat-hf and mistralai/Mixtral-8x7B-Instruct-v0.1 (tokenizer_config.json).
register_template(
    "chatml", template_file("chatml.jinja"), origin="ChatML, as in the HF chat-template docs"
)
register_template("llama2", template_file("llama2.jinja"), origin="meta-llama/Llama-2-7b-chat-hf")
register_template("llama3", template_file("llama3.jinja"), origin="Meta Llama 3 Instruct, via TRL")
register_template(
    "mistral",
    template_file("mistral.jinja"),
    origin="mistralai Mistral-7B and Mixtral-8x7B Instruct v0.1-v0.2",
    model_types=("mistral", "mixtral"),
)
register_template(
    "gemma",
    template_file("gemma.jinja"),
    origin="Google Gemma and Gemma 2 instruct, via TRL",
    model_types=("gemma", "gemma2"),
)
register_template(
    "phi3",
    template_file("phi3.jinja"),
    origin="Microsoft Phi-3 instruct, via TRL",
    model_types=("phi3",),
)
register_template(
    "qwen2.5",
    template_file("qwen2_5.jinja"),
    origin="Qwen2.5 instruct, via TRL",
    model_types=("qwen2", "qwen2_moe"),
)
register_template(
    "qwen3",
    template_file("qwen3.jinja"),
    origin="Qwen3, via TRL",
    model_types=("qwen3", "qwen3_moe"),
)
register_template(
    "plain", template_file("plain.jinja"), origin="easyllm, for base models without a template"
)
