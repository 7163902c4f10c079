"""easyllm: fine-tune a language model in three lines.

>>> from easyllm import ModelRunner
>>> runner = ModelRunner()
>>> runner.load_data("examples/data/identity.jsonl"); runner.train()
>>> print(runner.generate("Who are you?"))
"""

__version__ = "0.1.0"

from .errors import (
    ConfigError,
    DataError,
    EasyLLMError,
    ModelLoadError,
    UnknownNameError,
    UsageError,
)
from .runner import ModelRunner
from .tasks import register_task

__all__ = [
    "ConfigError", "DataError", "EasyLLMError", "ModelLoadError", "ModelRunner", "UnknownNameError",
    "UsageError", "__version__", "register_task",
]
