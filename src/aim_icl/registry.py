"""One registry type for everything pluggable: families, projectors, tasks, metrics, selectors, readers."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from aim_icl.errors import AIMError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table that refuses collisions and suggests close names on a miss.

    `discover`: called once, on the first miss, to register more entries (e.g. from installed packages' entry
    points), so nothing outside the package is imported until a name is not found among its own.
    """

    def __init__(self, kind: str, discover: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._discover = discover

    def register(self, name: str, item: T | None = None) -> Callable[[T], T] | T:
        """`registry.register("x", obj)` or, as a decorator, `@registry.register("x")`."""

        def add(obj: T) -> T:
            if name in self._items:
                raise AIMError(f"{self.kind} {name!r} is already registered; pick another name")
            self._items[name] = obj
            return obj

        return add if item is None else add(item)

    def get(self, name: str) -> T:
        if name not in self._items and self._discover is not None:
            discover, self._discover = self._discover, None
            discover()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(self._items))}"
            raise AIMError(f"unknown {self.kind} {name!r}{hint}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
