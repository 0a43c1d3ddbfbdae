"""rgbx: multi-modal semantic segmentation with any subset of sensors.

The public API (imported lazily so that ``rgbx --help`` stays fast)::

    import rgbx
    model = rgbx.create_model(backbone="mit_b0", fusion="cmx", modalities=["rgb", "depth"], num_classes=40)
    model, info = rgbx.load_model("runs/x/model.safetensors")
    rgbx.transfer_weights(model, "trained_elsewhere.safetensors", classes=[...])  # fine-tuning start
    rgbx.list_models(); rgbx.list_modalities()
    rgbx.load_plugin("my_lab/gated_fusion.py")  # your own components, registered by name (docs/extending.md)
    rgbx.train("synth_cmx_b0", ["data.root=data/synth", "output_dir=runs/x"])   # = rgbx train
    rgbx.evaluate("runs/x/model.safetensors", "data/synth", "test", anymodal=True).miou("rgb")   # = rgbx eval
    rgbx.calibrate("runs/x/model.safetensors", "data/synth", "val")   # = rgbx calibrate: temperatures per sensor set
    rgbx.pseudo_label("runs/x/model.safetensors", "data/rig", "raw", "data/rig-pseudo")   # = rgbx pseudo-label
    segment = rgbx.Predictor.from_file("runs/x/model.safetensors", monitor=True)   # raw frames; failed sensors out
"""

from __future__ import annotations

import os

# MKL's conditional numerical reproducibility: without it, some CPU BLAS kernels pick code paths by memory alignment,
# so two identical runs (or a run and its resume after a kill) can differ in the last bits. "AUTO" keeps the fastest
# code path for the processor and makes results run-to-run identical for a fixed thread count. Read lazily by MKL,
# so this works even when torch was imported first; set MKL_CBWR yourself to choose otherwise.
os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"

# registries look for the installed packages' plugins when a name is not found (the hook lives in rgbx.plugins, which
# imports nothing heavy); importing any part of rgbx runs this first
from rgbx import plugins as _plugins  # noqa: E402,F401

_API = {
    "create_model": "rgbx.models",
    "list_models": "rgbx.models",
    "ModelConfig": "rgbx.models",
    "load_model": "rgbx.engine.checkpoint",
    "save_model": "rgbx.models.model_file",
    "transfer_weights": "rgbx.models.transfer",
    "register_modality": "rgbx.modalities",
    "ModalitySpec": "rgbx.modalities",
    "FolderDataset": "rgbx.data",
    "collate": "rgbx.data",
    "Batch": "rgbx.data",
    "load_plugin": "rgbx.plugins",
    "load_config": "rgbx.engine.config",
    "train": "rgbx.engine.trainer",
    "evaluate": ("rgbx.engine.evaluate", "evaluate_dataset"),
    "calibrate": ("rgbx.engine.calibration", "calibrate_file"),
    "pseudo_label": "rgbx.engine.pseudo_label",
    "PseudoLabelRule": "rgbx.engine.pseudo_label",
    "Predictor": "rgbx.engine.predict",
    "SensorMonitor": "rgbx.data.sensor_health",
    "HealthRules": "rgbx.data.sensor_health",
    "SensorFailure": "rgbx.data.sensor_health",
}

__all__ = [*_API, "list_modalities", "__version__"]


def list_modalities() -> list[str]:
    from rgbx.modalities import MODALITIES

    return MODALITIES.names()


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attribute = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rgbx' has no attribute {name!r}")
