"""Task strategies, one module per task, each registered by name in `TASKS`."""

from . import sft  # noqa: F401  (registers "sft"; first, so it is listed first)
from . import classify  # noqa: F401  (registers "classify")
from . import dpo, kto, orpo  # noqa: F401  (register "dpo", "kto", "orpo")
from . import pt, rm  # noqa: F401  (register "pt", "rm")
from ..data.prepared import DataOptions, DataReport, PreparedData
from .base import TASKS, Capabilities, ModelLoading, Task, register_task

__all__ = [
    "TASKS",
    "Capabilities",
    "DataOptions",
    "DataReport",
    "ModelLoading",
    "PreparedData",
    "Task",
    "register_task",
]
