"""The few errors easyllm raises on purpose; each message says what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class EasyLLMError(Exception):
    """Base class: catch this to handle any error easyllm raises deliberately."""


class DataError(EasyLLMError, ValueError):
    """Training data that cannot be used as given (names the file and line)."""


class ConfigError(EasyLLMError, ValueError):
    """A setting or combination of settings that cannot work."""


class UnknownNameError(EasyLLMError, LookupError):
    """A name (task, template, built-in model) that is not registered."""


class ModelLoadError(EasyLLMError, OSError):
    """A model or tokenizer that cannot be loaded (missing, offline, or unreadable)."""


class UsageError(EasyLLMError, RuntimeError):
    """Methods called in an order that cannot work, e.g. train() before load_data()."""


class SaveError(EasyLLMError, OSError):
    """A checkpoint or model could not be written (disk full, folder not writable).

    Nothing half-written is left.
    """


def with_suggestions(name: str, valid: Sequence[str]) -> str:
    """`'name'`, and the closest valid names: "'lerning_rate' (did you mean learning_rate?)"."""
    close = difflib.get_close_matches(name, list(valid), n=3)
    return f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else "")
