"""A fingerprint of how a tokenizer renders chats: an adapter is never used with another rendering.

An adapter learnt the exact tokens its chat template produced. The same adapter on a tokenizer
that renders differently (another template, other special tokens or ids, a tokenizers version
that normalises differently) still answers, only worse, and nothing says why. The fingerprint
is saved with the adapter and checked when it is loaded; a mismatch warns and says what differs
(`strict=True` refuses).

It covers the template's text, the special tokens with their ids, the generation prompt, and
the token ids of a fixed probe conversation rendered for training and for generation: the ids
catch a different rendering even when the template text is the same.

>>> saved = template_fingerprint(tokenizer)                  # doctest: +SKIP
>>> check_template(saved, other_tokenizer, source="runs/a")  # doctest: +SKIP
TemplateDriftWarning: runs/a: this tokenizer renders chats differently ...
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..fingerprints import digest

FINGERPRINT_VERSION = 1
# A conversation that exercises every role once and a second turn (history rendered as history).
PROBE: list[dict[str, str]] = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Hello! Who are you?"},
    {"role": "assistant", "content": "I am a helpful model."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
]


class TemplateDriftWarning(UserWarning):
    """An adapter is used with a tokenizer that renders chats unlike the one it was trained with."""


def template_fingerprint(tokenizer) -> dict[str, Any]:
    """What decides the tokens a chat becomes, as a JSON-serialisable dict with a `digest` of all.

    The readable parts (probe rendering, special tokens, generation prompt) are kept so that a
    mismatch can be explained, not only detected.
    """
    source = _template_source(tokenizer)
    parts: dict[str, Any] = {
        "template": digest(source),
        "special_tokens": _special_tokens(tokenizer),
        "special_ids": _special_ids(tokenizer),
        **_renderings(tokenizer, source),
    }
    return {"version": FINGERPRINT_VERSION, "digest": digest(parts), **parts}


def template_differences(saved: Mapping[str, Any], tokenizer) -> list[str]:
    """What renders differently now than in `saved` (a template_fingerprint), one line each."""
    now = template_fingerprint(tokenizer)
    if saved.get("digest") == now["digest"]:
        return []
    differences = []
    renders_alike = all(saved.get(key) == now[key] for key in ("probe_text", "prompt_text"))
    if saved.get("template") != now["template"]:
        untaken = (
            " (the probe conversations render the same: the difference is in a path they do not "
            "take, such as tools)"
        )
        differences.append("the chat template text differs" + (untaken if renders_alike else ""))
    differences += _token_differences(saved, now)
    if saved.get("generation_prompt") != now["generation_prompt"]:
        differences.append(
            f"generation prompt: {saved.get('generation_prompt')!r} then, "
            f"{now['generation_prompt']!r} now"
        )
    for key, what in (
        ("probe_text", "a training conversation"),
        ("prompt_text", "a generation prompt"),
    ):
        if saved.get(key) != now[key]:
            differences.append(
                f"{what} renders as (- then, + now):\n"
                + _text_diff(saved.get(key) or "", now[key] or "")
            )
    if renders_alike and (
        saved.get("probe_ids") != now["probe_ids"] or saved.get("prompt_ids") != now["prompt_ids"]
    ):
        differences.append(_ids_difference(saved, now, tokenizer))
    # same readable parts, other digest: a fingerprint of another version or edited
    if not differences:
        differences.append(
            f"the fingerprint differs ({saved.get('digest')} then, {now['digest']} now)"
        )
    return differences


def check_template(
    saved: Mapping[str, Any] | None, tokenizer, *, strict: bool = False, source: str
) -> list[str]:
    """Warn (or with `strict=True` raise ConfigError) when `tokenizer` renders chats unlike `saved`.

    `source` names where the fingerprint came from (a folder) in the message. A `saved` of None
    (a folder written before fingerprints existed) has nothing to compare. Returns the differences.
    """
    if saved is None:
        return []
    differences = template_differences(saved, tokenizer)
    if not differences:
        return []
    message = (
        f"{source}: this tokenizer renders chats differently from the one the model was trained "
        "with:\n  - "
        + "\n  - ".join(differences)
        + "\nThe model would see prompts unlike those it learnt from, and answer worse. Use the "
        f"tokenizer saved with it (ModelRunner.load({source!r}) without template=, or "
        f"AutoTokenizer.from_pretrained({source!r})), or train again with this tokenizer. If it is "
        "the saved tokenizer, this transformers/tokenizers version renders it differently: install "
        "the versions the run used (reproduce.json in its run folder lists them)."
    )
    if strict:
        raise ConfigError(message + " Pass strict=False to load it anyway (with a warning).")
    warnings.warn(message + " (strict=True refuses instead.)", TemplateDriftWarning, stacklevel=2)
    return differences


# -- the parts ----------------------------------------------------------------------------------
def _template_source(tokenizer) -> str | None:
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, Mapping):
        source = source.get("default")
    return source if isinstance(source, str) and source.strip() else None


def _special_tokens(tokenizer) -> dict[str, str]:
    """Role -> token string (bos_token, eos_token, pad_token, ...); several tokens are joined."""
    roles = {}
    for role, value in tokenizer.special_tokens_map.items():
        roles[role] = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return dict(sorted(roles.items()))


def _special_ids(tokenizer) -> dict[str, int]:
    """Token string -> id of every special and added control token."""
    tokens = {
        str(token): tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens
    }
    tokens.update(
        {
            added.content: token_id
            for token_id, added in tokenizer.added_tokens_decoder.items()
            if added.special
        }
    )
    return dict(sorted(tokens.items()))


def _renderings(tokenizer, source: str | None) -> dict[str, Any]:
    """The probe rendered for training, and a question rendered as generate() prompts it.

    The question has no system message, so a template's default one shows. Templates that refuse
    a system message get the probe without it; one that renders no chat leaves only the text
    to compare.
    """
    for probe in (PROBE, PROBE[1:]) if source is not None else ():
        question = [m for m in probe[:-1] if m["role"] != "system"]
        try:
            text = _render(tokenizer, source, probe, add_generation_prompt=False)
            history = _render(tokenizer, source, question, add_generation_prompt=False)
            prompt = _render(tokenizer, source, question, add_generation_prompt=True)
        except Exception:  # noqa: BLE001,S112 (templates raise anything, from raise_exception to TypeError)
            continue
        return {
            "generation_prompt": _generation_prompt(history, prompt, question[-1]["content"]),
            "probe_text": text,
            "prompt_text": prompt,
            "probe_ids": _ids(tokenizer, text),
            "prompt_ids": _ids(tokenizer, prompt),
        }
    return {
        "generation_prompt": None,
        "probe_text": None,
        "prompt_text": None,
        "probe_ids": [],
        "prompt_ids": [],
    }


def _render(
    tokenizer, source: str, messages: list[dict[str, str]], *, add_generation_prompt: bool
) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _ids(tokenizer, text: str) -> list[int]:
    """The ids the rendered text becomes (as apply_chat_template tokenizes it: no extra BOS/EOS)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _generation_prompt(history: str, prompt: str, question: str) -> str:
    """What add_generation_prompt adds (all after the question, if it also changes the history)."""
    if prompt.startswith(history):
        return prompt[len(history) :]
    return prompt[prompt.rfind(question) + len(question) :]


# -- explaining a difference ---------------------------------------------------------------------
def _token_differences(saved: Mapping[str, Any], now: dict[str, Any]) -> list[str]:
    lines = []
    then_roles, now_roles = saved.get("special_tokens", {}), now["special_tokens"]
    for role in sorted(set(then_roles) | set(now_roles)):
        if then_roles.get(role) != now_roles.get(role):
            then_token, now_token = then_roles.get(role, "(none)"), now_roles.get(role, "(none)")
            lines.append(f"{role}: {then_token!r} then, {now_token!r} now")
    then_ids, now_ids = saved.get("special_ids", {}), now["special_ids"]
    for token in sorted(set(then_ids) & set(now_ids)):
        if then_ids[token] != now_ids[token]:
            lines.append(
                f"special token {token!r} has id {then_ids[token]} then, {now_ids[token]} now"
            )
    for token in sorted(set(then_ids) ^ set(now_ids)):
        lines.append(f"special token {token!r} " + ("is gone" if token in then_ids else "is new"))
    return lines


def _text_diff(then: str, now: str) -> str:
    lines = difflib.unified_diff(
        then.splitlines(keepends=True), now.splitlines(keepends=True), lineterm="", n=1
    )
    return "\n".join("      " + line.rstrip("\n") for line in list(lines)[2:])


def _ids_difference(saved: Mapping[str, Any], now: dict[str, Any], tokenizer) -> str:
    """Same text, other ids: say where they first differ and what the tokens are now."""
    key = "probe_ids" if saved.get("probe_ids") != now["probe_ids"] else "prompt_ids"
    then_ids, now_ids = list(saved.get(key) or []), now[key]
    first = next(
        (i for i, (a, b) in enumerate(zip(then_ids, now_ids)) if a != b),
        min(len(then_ids), len(now_ids)),
    )
    shown = tokenizer.convert_ids_to_tokens(now_ids[first : first + 4])
    return (
        "the same rendered text becomes other token ids (normalisation or vocabulary), "
        f"from token {first}: {then_ids[first : first + 4]} then, "
        f"{now_ids[first : first + 4]} {shown} now"
    )
