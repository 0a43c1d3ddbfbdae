"""A small name → object registry, one per component kind (modalities, backbones, fusions, heads, ...).

Registries are filled by explicit imports in each subpackage's ``__init__`` so that "X is not registered" can only
mean a wrong name (or a plugin not loaded), and an unknown name raises an error listing every valid one.

Components of the user's own code register the same way, from a plugin module (:mod:`rgbx.plugins`): each registry
remembers which plugin registered a name, and when a name is not found it calls the miss hooks (rgbx.plugins adds
one that loads, once, the plugins installed packages declare) and looks again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from rgbx.errors import ConfigError

T = TypeVar("T")


_REGISTRIES: list[Registry] = []
_MISS_HOOKS: list[Callable[[], bool]] = []


def add_miss_hook(hook: Callable[[], bool]) -> None:
    """Call ``hook()`` when a registry does not find a name; it returns True when it registered something (then the
    registry looks again)."""
    if hook not in _MISS_HOOKS:
        _MISS_HOOKS.append(hook)


def _on_miss() -> bool:
    return any([hook() for hook in _MISS_HOOKS])


class Registry(Generic[T]):
    """Maps names to components of one kind.

    Example:
        >>> BACKBONES = Registry("backbone")
        >>> @BACKBONES.register("mit_b0")
        ... def mit_b0(**kw): ...
        >>> BACKBONES.get("mit_b0")
    """

    #: the plugin being imported (set by :func:`rgbx.plugins.load_plugin`): what it registers is recorded as coming
    #: from it
    loading: str | None = None

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}
        self._origins: dict[str, str] = {}  # name -> the plugin that registered it
        _REGISTRIES.append(self)

    @staticmethod
    def all() -> list[Registry]:
        """Every registry created so far (one per component kind)."""
        return list(_REGISTRIES)

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._registrant(name)}): "
                                 f"choose another name")
            self._items[name] = item
            if Registry.loading is not None:
                self._origins[name] = Registry.loading
            return item

        return add if obj is None else add(obj)

    def register_prefix(self, prefix: str, make: Callable[[str], T]) -> None:
        """Resolve every name ``prefix + rest`` to ``make(rest)`` (e.g. ``"timm:"`` + any timm model name)."""
        self._prefixes[prefix] = make

    def _registrant(self, name: str) -> str:
        """Who registered ``name``: its plugin, else the module defining it (a class or function), else rgbx."""
        item = self._items[name]
        module = getattr(item, "__module__", None) if isinstance(item, type) or callable(item) else None
        return self.origin(name) or module or "rgbx"

    def forget(self, origin: str) -> None:
        """Unregister every name the plugin ``origin`` registered (its import failed half-way)."""
        for name in [n for n, o in self._origins.items() if o == origin]:
            del self._items[name], self._origins[name]

    def origin(self, name: str) -> str | None:
        """The plugin (module name or file, as loaded) that registered ``name``; None for rgbx's own and for names
        registered outside a plugin load (e.g. by a script)."""
        return self._origins.get(name)

    def get(self, name: str) -> T:
        if name not in self._items and not self.prefix_of(name):
            _on_miss()
        if name in self._items:
            return self._items[name]
        prefix = self.prefix_of(name)
        if prefix is not None:
            return self._prefixes[prefix](name[len(prefix):])
        raise ConfigError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names()) or '(none)'}"
                          f" (one of your own: load its module first with --import MODULE_OR_FILE or the config's "
                          f"`imports`; docs/extending.md)")

    def prefix_of(self, name: object) -> str | None:
        """The registered prefix ``name`` resolves through (``"timm:"`` for ``"timm:resnet18"``), or None."""
        if not isinstance(name, str):
            return None
        return next((p for p in self._prefixes if name.startswith(p) and len(name) > len(p)), None)

    def names(self) -> list[str]:
        return sorted(self._items) + [f"{p}<name>" for p in sorted(self._prefixes)]

    def __contains__(self, name: object) -> bool:
        if name in self._items or self.prefix_of(name) is not None:
            return True
        if isinstance(name, str) and _on_miss():
            return name in self._items or self.prefix_of(name) is not None
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
