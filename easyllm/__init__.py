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

from .errors import (
    ConfigError,
    DataError,
    EasyLLMError,
    ModelLoadError,
    SaveError,
    UnknownNameError,
    UsageError,
)
from .runner import ModelRunner
from .synthesis import Endpoint, synthesize
from .tasks import register_task
from .version import __version__

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
