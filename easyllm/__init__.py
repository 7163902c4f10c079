"""easyllm: fine-tune a language model in three lines.

>>> from easyllm import ModelRunner
>>> runner = ModelRunner()
>>> runner.load_data("examples/data/identity.jsonl"); runner.train()
>>> print(runner.generate("Who are you?"))
"""

import logging

# bitsandbytes warns at import, on every AVX512-BF16 CPU, that an optional hub-downloaded kernel
# is missing. easyllm never uses that kernel path (see adapters.keep_4bit_weights_trainable).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DataError,
    EasyLLMError,
    ModelLoadError,
    SaveError,
    UnknownNameError,
    UsageError,
)
from .version import __version__

if TYPE_CHECKING:
    from .runner import ModelRunner
    from .synthesis import Endpoint, synthesize
    from .tasks import register_task

# Imported on first use (PEP 562): `import easyllm` (and so `easyllm --help`) loads no torch.
_LAZY = {
    "ModelRunner": ".runner",
    "Endpoint": ".synthesis",
    "synthesize": ".synthesis",
    "register_task": ".tasks",
}
__all__ = [
    "ConfigError",
    "DataError",
    "EasyLLMError",
    "Endpoint",
    "ModelLoadError",
    "ModelRunner",
    "SaveError",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "register_task",
    "synthesize",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'easyllm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
