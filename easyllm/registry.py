"""One small registry used for tasks, row formats and built-in models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to items; refuses duplicates and explains unknown names.

    >>> colours = Registry[str]("colour")
    >>> colours.register("red", "#f00")
    '#f00'
    >>> colours.get("red")
    '#f00'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str, item: T, *, replace: bool = False) -> T: ...

    @overload
    def register(
        self, name: str, item: None = None, *, replace: bool = False
    ) -> Callable[[T], T]: ...

    def register(self, name: str, item: T | None = None, *, replace: bool = False):
        """Register `item` under `name`; without `item`, return a decorator."""
        if item is None:
            return lambda obj: self.register(name, obj, replace=replace)
        key = name.lower()
        if key in self._items and not replace:
            raise ValueError(
                f"A {self.kind} named '{name}' is already registered; pass replace=True."
            )
        self._items[key] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise UnknownNameError(
                f"Unknown {self.kind} '{name}'. Registered: {', '.join(self.names()) or '(none)'}."
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())
