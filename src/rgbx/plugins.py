"""Plugins: the user's own components (backbones, fusions, heads, methods, losses, datasets, sensors, augmentations)
registered in rgbx's registries, so that every command uses them by name like rgbx's own.

A plugin is a Python module that registers components when it is imported (``@FUSIONS.register("gated")``, ...;
``docs/extending.md`` shows each kind). rgbx imports it from

* ``--import MODULE_OR_FILE`` on any ``rgbx`` command (repeatable): a module name on ``sys.path``
  (``my_lab.fusions``) or a ``.py`` file (``plugins/gated.py``, relative to the current folder);
* the config key ``imports`` (a list of the same; a file relative to the YAML file that names it), so a run's
  ``config.yaml`` and ``--resume`` load them again;
* an installed package's entry point in the group ``rgbx.plugins`` (``[project.entry-points."rgbx.plugins"]`` in its
  ``pyproject.toml``): loaded by itself the first time a name is not found in a registry.
  ``RGBX_DISABLE_PLUGIN_AUTOLOAD=1`` turns that off;
* ``rgbx.load_plugin(MODULE_OR_FILE)`` in Python.

A model file records the plugin its backbone / fusion / head came from, and loading it without that plugin is an
error naming it. rgbx never imports a plugin because a file says so: loading code stays the user's decision.

A file plugin's module is named ``rgbx_plugin_<stem>_<hash of its path>``. Processes started by *spawn* or
*forkserver* (DataLoader workers on macOS and Windows, and on Linux from Python 3.14) unpickle the plugin's datasets
and transforms by that name without having loaded the plugin: the files a process loaded are listed in the
environment (``RGBX_FILE_PLUGINS``), which its children inherit, and importing rgbx there lets them find the module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from rgbx.errors import ConfigError
from rgbx.registry import Registry, add_miss_hook

ENTRY_POINT_GROUP = "rgbx.plugins"
DISABLE_AUTOLOAD = "RGBX_DISABLE_PLUGIN_AUTOLOAD"
FILE_PLUGINS_ENV = "RGBX_FILE_PLUGINS"  # JSON list of the file plugins loaded, for the child processes
FILE_MODULE_PREFIX = "rgbx_plugin_"

_LOADED: dict[str, ModuleType] = {}  # spec as resolved (module name or absolute file path) -> module
_INSTALLED: dict[str, str] = {}  # entry point "name = value" -> the module it loaded
_installed_done = False

__all__ = ["ENTRY_POINT_GROUP", "FILE_PLUGINS_ENV", "file_module_name", "load_plugin", "load_plugins",
           "load_installed_plugins", "loaded_plugins", "plugin_source", "registered_by", "resolve_spec",
           "prescan_imports"]


def is_file_spec(spec: str) -> bool:
    """A spec naming a ``.py`` file (rather than a module name)."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def resolve_spec(spec: str, base_dir: str | Path | None = None) -> str:
    """A file spec as an absolute path (relative to ``base_dir``, default the current folder); a module name as is."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("plugin: an empty module name / file path")
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return str(path.resolve())


def load_plugin(spec: str, base_dir: str | Path | None = None) -> ModuleType:
    """Import the plugin ``spec`` (a module name or a ``.py`` file) once and return its module.

    Whatever the module registers is recorded as coming from it (``rgbx info`` lists it; model files name it).
    A missing module / file or an error raised while importing it is a ConfigError naming the plugin, the error and
    the plugin's line that raised it (``RGBX_DEBUG=1`` shows the whole traceback).
    """
    resolved = resolve_spec(spec, base_dir)
    if resolved in _LOADED:
        return _LOADED[resolved]
    _register_builtins()  # rgbx's own components first, so that none is recorded as the plugin's
    previous, Registry.loading = Registry.loading, resolved
    try:
        module = _import_file(resolved) if is_file_spec(resolved) else _import_module(resolved)
    except ConfigError:
        for registry in Registry.all():  # a plugin that failed half-way leaves nothing registered (a retry works)
            registry.forget(resolved)
        raise
    finally:
        Registry.loading = previous
    _LOADED[resolved] = module
    if is_file_spec(resolved):
        _share_with_child_processes(resolved)
    return module


def _register_builtins() -> None:
    import rgbx.data.datasets
    import rgbx.data.transforms
    import rgbx.methods
    import rgbx.modalities
    import rgbx.models  # noqa: F401


def load_plugins(specs: Iterable[str], base_dir: str | Path | None = None) -> list[ModuleType]:
    return [load_plugin(spec, base_dir) for spec in specs]


def _import_module(name: str) -> ModuleType:
    if name in sys.modules:  # imported before (e.g. by the user's script): what it registered then stays unattributed
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.split(".")[0] == e.name.split(".")[0] and name.startswith(e.name):
            hint = ""
            if Path(f"{name.replace('.', os.sep)}.py").is_file():
                hint = f"; the current folder is not on the module path: give the file, --import ./{name.replace('.', '/')}.py"
            raise ConfigError(f"plugin {name!r}: no module of that name on the module path (sys.path){hint}") from e
        raise _import_error(name, e) from e
    except Exception as e:  # noqa: BLE001 — the user's code may raise anything while it is imported
        raise _import_error(name, e) from e


def _import_file(path: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"plugin {path}: file not found")
    if file.suffix != ".py":
        raise ConfigError(f"plugin {path}: expected a Python file (.py) or a module name")
    name = file_module_name(path)
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses, pickling and relative lookups need the module registered
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        del sys.modules[name]
        raise _import_error(path, e) from e
    return module


def file_module_name(path: str) -> str:
    """The module name of the file plugin at the absolute ``path``: one of its own per file, so that two plugins
    called ``model.py`` in different folders do not collide, and the same in every process."""
    return f"{FILE_MODULE_PREFIX}{Path(path).stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def _shared_files() -> list[str]:
    try:
        files = json.loads(os.environ.get(FILE_PLUGINS_ENV) or "[]")
    except json.JSONDecodeError:
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _share_with_child_processes(path: str) -> None:
    files = _shared_files()
    if path not in files:
        os.environ[FILE_PLUGINS_ENV] = json.dumps([*files, path])


class _FilePluginFinder(importlib.abc.MetaPathFinder):
    """Finds a file plugin's module by name in a process that has not loaded it but whose parent did (a spawned
    DataLoader worker unpickling the plugin's dataset): loads the file as :func:`load_plugin` does."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(FILE_MODULE_PREFIX):
            return None
        for file in _shared_files():
            if file_module_name(file) == fullname:
                return importlib.util.spec_from_loader(fullname, _FilePluginLoader(file))
        return None


class _FilePluginLoader(importlib.abc.Loader):
    def __init__(self, file: str):
        self.file = file

    def exec_module(self, module) -> None:
        # load_plugin puts the module it runs in sys.modules under the same name: the import returns that one
        load_plugin(self.file)


def _import_error(spec: str, error: BaseException) -> ConfigError:
    frames = traceback.extract_tb(error.__traceback__)
    # the innermost line of the user's code (not importlib's machinery, not rgbx), e.g. plugin.py:12
    rgbx_dir = str(Path(__file__).resolve().parent)
    own = [f for f in frames if "importlib" not in f.filename and not f.filename.startswith("<frozen")
           and not str(Path(f.filename).resolve()).startswith(rgbx_dir + os.sep)]
    where = f" ({own[-1].filename}:{own[-1].lineno})" if own else ""
    return ConfigError(f"plugin {spec}: importing it failed: {type(error).__name__}: {error}{where}")


def load_installed_plugins() -> list[str]:
    """Load the plugins installed packages declare (entry points of the group ``rgbx.plugins``), once per process.

    Returns the entry points loaded by this call (``[]`` after the first call, or with
    ``RGBX_DISABLE_PLUGIN_AUTOLOAD`` set). A plugin that fails to import is a ConfigError naming its package.
    """
    global _installed_done
    if _installed_done or os.environ.get(DISABLE_AUTOLOAD):
        return []
    _installed_done = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        label = f"{ep.name} = {ep.value}"
        dist = getattr(ep, "dist", None)
        try:
            load_plugin(ep.module)
        except ConfigError as e:
            package = f" of the installed package {dist.name!r}" if dist is not None else ""
            raise ConfigError(f"entry point {label!r}{package} (group {ENTRY_POINT_GROUP}): {e} "
                              f"(set {DISABLE_AUTOLOAD}=1 to skip installed plugins)") from None
        _INSTALLED[label] = ep.module
        loaded.append(label)
    return loaded


def loaded_plugins() -> list[str]:
    """The plugins loaded in this process, as resolved (module names, absolute file paths)."""
    return list(_LOADED)


def plugin_source(spec: str) -> Path | None:
    """The source file of the loaded plugin ``spec`` (its module's file: a package's ``__init__.py``), or None."""
    module = _LOADED.get(spec)
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def registered_by(spec: str) -> list[str]:
    """What the plugin ``spec`` (as resolved) registered, as ``"<kind> <name>"`` strings."""
    return [f"{registry.kind} {name}" for registry in Registry.all() for name in registry
            if registry.origin(name) == spec]


def prescan_imports(argv: list[str]) -> list[str]:
    """The values of every ``--import X`` / ``--import=X`` in a command line, in order (read before the parser is
    built, so that choices and defaults can name the plugins' components)."""
    specs = []
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == "--import" and i + 1 < len(argv):
            specs.append(argv[i + 1])
        elif token.startswith("--import="):
            specs.append(token.split("=", 1)[1])
    return specs


add_miss_hook(lambda: bool(load_installed_plugins()))  # a name not found: the installed packages' plugins, once
if not any(isinstance(finder, _FilePluginFinder) for finder in sys.meta_path):
    sys.meta_path.append(_FilePluginFinder())
