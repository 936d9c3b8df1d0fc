"""Explicit name -> class registries, keyed by the names recipes use."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict of builders; unknown names are errors that list the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def build(self, name: str, /, **options: Any) -> T:
        """Instantiate ``name`` with ``options``, naming any option its class does not take."""
        builder = self.get(name)
        params = inspect.signature(builder).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(options) - set(params))
            if unknown:
                raise TypeError(
                    f"{self.kind} {name!r} has no option {unknown[0]!r}; "
                    f"valid: {', '.join(sorted(params))}"
                )
        return builder(**options)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
