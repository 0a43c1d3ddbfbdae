"""The rgbx model file: safetensors weights with the model config and dataset info (classes, palette, ignore
index) embedded as JSON metadata, so :func:`load_model` (and ``rgbx eval`` / ``predict``) rebuild the model from the
file alone.

Every write goes to a temporary file in the same folder and is then renamed over the target (atomic on POSIX), so a
kill mid-write never leaves a truncated file and never damages the previous one; the temporary file it leaves is
removed by :func:`remove_unfinished_writes`. Files get the usual permissions (``0o666`` less the umask). The training state (optimizer,
scheduler, ...) is the engine's business: :mod:`rgbx.engine.checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rgbx.device import resolve_device
from rgbx.errors import CheckpointError, ConfigError
from rgbx.modalities import BUILTIN_MODALITIES, declare_modality, get_modality, spec_from_dict, spec_to_dict
from rgbx.models.config import ModelConfig
from rgbx.models.registries import BACKBONES, FUSIONS, HEADS
from rgbx.models.segmentor import create_model
from rgbx.models.weights import load_strict

FORMAT = "rgbx-model/1"


# atomic_write's temporary files: ".<target name>.rgbx-partial-<8 random characters>.tmp" (mkstemp's random part:
# lower-case letters, digits and "_"), a name no user file is likely to have; remove_unfinished_writes deletes them
PARTIAL_MARK = "rgbx-partial-"
_PARTIAL = re.compile(rf"\.(?P<target>.+)\.{PARTIAL_MARK}[a-z0-9_]{{8}}\.tmp")
# what versions before the mark wrote (".<target>.<8 random characters>.tmp"): matched only for the targets rgbx
# writes with atomic_write (model files and training states), never for any other name
_PARTIAL_BEFORE = re.compile(r"\.(?P<target>.+\.(?:safetensors|pt))\.[a-z0-9_]{8}\.tmp")


def _umask_at_import() -> int:
    mask = os.umask(0)  # the only portable way to read it sets it: done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux ≥ 4.7: ``/proc/self/status``), so
    that it is safe with threads writing files meanwhile and follows a umask set after import; elsewhere the umask
    at import (reading it there means setting it for a moment, which a thread creating a file at that moment would
    feel)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory); nothing where the OS cannot (Windows) or the
    file system refuses."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``.

    The temporary file, ``.<name>.rgbx-partial-XXXXXXXX.tmp`` in the same folder, is removed when ``write`` fails; a
    process killed mid-write (SIGKILL, out of memory) leaves it behind: :func:`remove_unfinished_writes` deletes such
    leftovers. The file gets the permissions a file created with ``open()`` would get (``0o666`` less the umask, e.g.
    0644), not the temporary file's 0600, so that others on a shared file system can read models; a target that
    exists is replaced with those permissions too (not its own). After the rename the folder is fsynced (POSIX),
    so that the rename itself survives a crash."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{PARTIAL_MARK}", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write a file there ({e.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_folder(path.parent)
    return path


def remove_unfinished_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` (not in its subfolders) when its
    process was killed mid-write, and return them. Only files named as atomic_write names them
    (``.<name>.rgbx-partial-XXXXXXXX.tmp``, or ``.<name>.XXXXXXXX.tmp`` for a ``.safetensors`` / ``.pt`` target, as
    earlier versions named them) are touched; links, folders and every other file stay. A missing folder is no
    error (nothing to remove). Call it only while no other process writes to ``folder`` (at the start of a run or
    of a resume): a write in progress elsewhere would lose its temporary file."""
    folder = Path(folder)
    removed = []
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not (_PARTIAL.fullmatch(entry.name) or _PARTIAL_BEFORE.fullmatch(entry.name)):
            continue
        if entry.is_symlink() or not entry.is_file():
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def save_model(path: str | Path, model: torch.nn.Module, dataset: dict | None = None, **info) -> Path:
    """Write model weights + config (+ dataset info: classes, palette, ignore_index; ``storage`` when known,
    :func:`dataset_record`) as a safetensors file, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "model": model.config.to_dict(), "dataset": dataset or {}, **info}
    # a sensor rgbx does not define (declared in a dataset.yaml, or registered by the user's code) travels with the
    # weights, so that the file is usable in a process that never saw its declaration
    sensors = {m: spec_to_dict(get_modality(m)) for m in model.config.modalities if m not in BUILTIN_MODALITIES}
    if sensors:
        meta["sensors"] = sensors
    plugins = component_plugins(model.config)
    if plugins:
        meta["plugins"] = plugins
    metadata = {"rgbx": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


STORAGE_FIELDS = ("encoding", "dtype", "scale")


def dataset_record(description, modalities=None) -> dict:
    """What a model file records of the dataset it was trained on: ``description.to_dict()`` (classes, palette,
    ignore index) and ``storage``: for each sensor of ``modalities`` (all the dataset's when None) its files'
    encoding, dtype and scale, as the dataset.yaml states them (e.g. thermal as uint16 × 1.5259e-05 where the
    built-in thermal is uint8 / 255), so that files given to ``rgbx predict`` and the exported ONNX file's
    normalisation follow the training data's storage rather than the sensor's built-in one. Only for data whose
    loader decodes by scale alone (:meth:`SegmentationDataset.decodes_by_scale`): the trainer checks."""
    sources = description.modalities
    names = [m for m in (sources if modalities is None else modalities) if m in sources]
    storage = {m: {k: getattr(sources[m], k) for k in STORAGE_FIELDS} for m in names}
    for m in names:  # a sensor stored at another resolution: rgbx predict resamples its loose files the same way
        if sources[m].resize:
            storage[m]["resize"] = sources[m].resize
    return {**description.to_dict(), "storage": storage}


def recorded_storage(dataset) -> dict[str, dict]:
    """``{sensor: {encoding, dtype, scale[, resize]}}`` from a model file's dataset info (:func:`dataset_record`); {} for a
    file that does not record it (written before rgbx recorded storage, or converted): its sensors' files are then
    read as the sensors' own specs say."""
    storage = (dataset or {}).get("storage") if isinstance(dataset, dict) else None
    if not isinstance(storage, dict):
        return {}
    return {m: {k: v[k] for k in (*STORAGE_FIELDS, "resize") if k in v} for m, v in storage.items()
            if isinstance(v, dict)}


def component_plugins(cfg: ModelConfig) -> dict[str, str]:
    """``{"fusion gated": plugin}`` for each of the model's backbone / fusion / head that a plugin registered
    (:mod:`rgbx.plugins`), or that code outside rgbx registered (then its module)."""
    found = {}
    for kind, registry in (("backbone", BACKBONES), ("fusion", FUSIONS), ("head", HEADS)):
        name = getattr(cfg, kind)
        if name not in registry or registry.prefix_of(name) is not None:
            continue
        module = getattr(registry.get(name), "__module__", "") or ""
        origin = registry.origin(name) or ("" if module.split(".")[0] == "rgbx" else module)
        if origin:
            found[f"{kind} {name}"] = origin
    return found


def missing_plugin(info: dict) -> str | None:
    """How to load the plugin a model file's components came from, when one of them is not registered."""
    for component, plugin in (info.get("plugins") or {}).items():
        kind, name = component.split(" ", 1)
        registry = {"backbone": BACKBONES, "fusion": FUSIONS, "head": HEADS}.get(kind)
        if registry is not None and name not in registry:
            return (f"its {kind} {name!r} came from the plugin {plugin!r}, which is not loaded: load it first "
                    f"(--import {plugin}, or rgbx.load_plugin({plugin!r}) in Python)")
    return None


def read_model_info(path: str | Path, missing_ok: bool = False) -> dict:
    """The metadata of an rgbx weights file (model config, dataset info, ...); with ``missing_ok``, {} for a
    safetensors file that has none (a plain state dict)."""
    path = Path(path)
    if path.is_dir():
        found = [p.name for p in (path / "model.safetensors", path / "best.safetensors") if p.is_file()]
        raise CheckpointError(f"{path}: a folder, not a model file"
                              + (f"; it holds {' and '.join(found)} (e.g. {path / found[0]})" if found else ""))
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        with path.open("rb") as f:
            head = f.read(4)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle
            raise CheckpointError(f"{path}: a PyTorch checkpoint (torch.save), not an rgbx model file; convert a "
                                  f"released checkpoint first: rgbx convert {path} --out model.safetensors "
                                  f"(rgbx convert --help)") from None
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if "rgbx" not in meta:
        if missing_ok:
            return {}
        raise CheckpointError(f"{path}: safetensors file without rgbx metadata (not written by rgbx; convert it first)")
    try:
        info = json.loads(meta["rgbx"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt rgbx metadata ({e})") from None
    return info


def declare_sensors(info: dict, path: str | Path) -> None:
    """Register the sensors a model file states (those rgbx does not define); a different definition already
    registered under the same name is a CheckpointError naming the fields that differ."""
    for name, fields in (info.get("sensors") or {}).items():
        try:
            declare_modality(spec_from_dict(name, fields), f"{path} (its sensor {name!r})")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a readable report of every missing / unexpected / mis-shaped tensor."""
    load_strict(model, state, source)


def describe_model(cfg: dict) -> str:
    return (f"{cfg.get('fusion')}/{cfg.get('backbone')} over {'+'.join(cfg.get('modalities', []))} "
            f"with {cfg.get('num_classes')} classes")


def load_weights(path: str | Path, model: torch.nn.Module) -> dict:
    """Load an rgbx weights file into an existing ``model``; a checkpoint of another model is a CheckpointError."""
    path = Path(path)
    info = read_model_info(path)
    theirs, ours = info.get("model", {}), model.config.to_dict()
    keys = ("backbone", "fusion", "head", "modalities", "num_classes", "head_channels")
    diff = [k for k in keys if theirs.get(k) != ours.get(k)]
    if diff:
        raise CheckpointError(
            f"{path}: checkpoint is for a different model: it is {describe_model(theirs)}, expected "
            f"{describe_model(ours)} (differs in {', '.join(diff)})"
        )
    load_state_into(model, _read_tensors(path), str(path))
    return info


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from an rgbx weights file alone. Returns (model in eval mode, metadata)."""
    path = Path(path)
    device = resolve_device(device, "device")  # a device this machine lacks: one clear error, before any work
    info = read_model_info(path)
    declare_sensors(info, path)
    try:
        cfg = replace(ModelConfig.from_dict(info["model"]), pretrained="")  # the file holds all the weights
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path}: invalid model config in metadata ({e})") from None
    missing = missing_plugin(info)
    if missing:
        raise CheckpointError(f"{path}: {missing}")
    model = create_model(cfg)
    load_state_into(model, _read_tensors(path), str(path))
    return model.to(device).eval(), info


def differing_class_names(recorded, classes) -> list[tuple[int, str, str]]:
    """``(index, recorded name, given name)`` where two lists of class names differ (case, spaces, '-' and '_' do not
    count); an index only one list has compares with ``''``."""
    recorded, classes = list(recorded), list(classes)
    n = max(len(recorded), len(classes))
    pairs = [(i, recorded[i] if i < len(recorded) else "", classes[i] if i < len(classes) else "") for i in range(n)]
    return [(i, a, b) for i, a, b in pairs if _name_key(a) != _name_key(b)]


def _name_key(name) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()
