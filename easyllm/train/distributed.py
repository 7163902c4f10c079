"""Several processes (torchrun, accelerate launch): decide once, on the main process, and agree.

In a single process every helper here is a plain call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True in a single process, and on global rank 0 under torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def shared_state():
    """The processes' shared state, set up as `run_arguments` has the Trainer do it (CPU: gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (downloads, caches), then the others (if any)."""
    if not distributed():
        yield
        return
    with shared_state().main_process_first():
        yield


def on_main_process(function, *args: Any, **kwargs: Any) -> Any:
    """Run `function` on the main process only; every process gets its result, or its error."""
    if not distributed():
        return function(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    shared_state()
    outcome: list[Any] = [None]
    if is_main_process():
        try:
            outcome = [(True, function(*args, **kwargs))]
        except Exception as error:  # noqa: BLE001 (the others would otherwise wait forever for a result)
            outcome = [(False, error)]
    broadcast_object_list(outcome)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value
