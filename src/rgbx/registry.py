"""A small name → object registry, one per component kind (modalities, backbones, fusions, heads, ...).

Registries are filled by explicit imports in each subpackage's ``__init__`` so that "X is not registered" can only
mean a wrong name, and an unknown name raises an error listing every valid one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from rgbx.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to components of one kind.

    Example:
        >>> BACKBONES = Registry("backbone")
        >>> @BACKBONES.register("mit_b0")
        ... def mit_b0(**kw): ...
        >>> BACKBONES.get("mit_b0")
    """

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def register_prefix(self, prefix: str, make: Callable[[str], T]) -> None:
        """Resolve every name ``prefix + rest`` to ``make(rest)`` (e.g. ``"timm:"`` + any timm model name)."""
        self._prefixes[prefix] = make

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        for prefix, make in self._prefixes.items():
            if isinstance(name, str) and name.startswith(prefix) and len(name) > len(prefix):
                return make(name[len(prefix):])
        raise ConfigError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names()) or '(none)'}")

    def names(self) -> list[str]:
        return sorted(self._items) + [f"{p}<name>" for p in sorted(self._prefixes)]

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        return isinstance(name, str) and any(name.startswith(p) and len(name) > len(p) for p in self._prefixes)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
