"""Original implementations imported from a checkout given at run time, for parity checks and benchmarks.

Nothing of the references is committed to rgbx; get a checkout outside the repository, e.g. for CMX
(https://github.com/huaaaliu/RGBX_Semantic_Segmentation, MIT licence)::

    git clone https://github.com/huaaaliu/RGBX_Semantic_Segmentation /tmp/cmx_ref

Use (with ``benchmarks/`` on ``sys.path``)::

    from references import build_cmx_reference, cmx_to_rgbx

    ref = build_cmx_reference("/tmp/cmx_ref", backbone="mit_b2").eval()   # forward(rgb, x3) → logits at input size
    model = cmx_to_rgbx(ref, modalities=("rgb", "depth"))                  # the same weights in rgbx, eval mode

Only ``models/net_utils.py``, ``models/encoders/dual_segformer.py`` and ``models/decoders/MLPDecoder.py`` are
imported. They are loaded under a private package name (``_rgbx_reference_cmx.models...``), and the one absolute
import they need from the rest of the checkout (``engine.logger.get_logger``) is served by a stand-in that is
registered in ``sys.modules`` only while they are imported, so no top-level ``engine`` / ``models`` / ``utils``
module is left behind.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["build_cmx_reference", "cmx_to_rgbx", "load_cmx_modules", "stand_in_modules"]

_PACKAGE = "_rgbx_reference_cmx"
_CMX_FILES = {
    "models.net_utils": "models/net_utils.py",
    "models.encoders.dual_segformer": "models/encoders/dual_segformer.py",
    "models.decoders.MLPDecoder": "models/decoders/MLPDecoder.py",
}
_CMX_BACKBONES = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")
_cache: dict[Path, dict[str, types.ModuleType]] = {}


@contextmanager
def stand_in_modules(modules: Mapping[str, types.ModuleType]) -> Iterator[None]:
    """Serve ``modules`` from ``sys.modules`` while the block runs (what a reference file imports by absolute name),
    then put back what was there before, so no top-level ``engine`` / ``utils`` / ... module is left behind."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _package(name: str) -> types.ModuleType:
    mod = sys.modules.get(name)
    if mod is None:
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    return mod


def load_cmx_modules(reference_dir: str | Path) -> dict[str, types.ModuleType]:
    """Import the three CMX model files of a checkout (cached per checkout): ``{"net_utils", "dual_segformer",
    "MLPDecoder"}`` → module."""
    root = Path(reference_dir).resolve()
    if root in _cache:
        return _cache[root]
    missing = [rel for rel in _CMX_FILES.values() if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a CMX checkout (missing {', '.join(missing)})")
    tag = f"{_PACKAGE}{len(_cache) or ''}"
    for pkg in (tag, f"{tag}.models", f"{tag}.models.encoders", f"{tag}.models.decoders"):
        _package(pkg)
    # The stand-in for the checkout's engine/logger.py, visible only during the import.
    logger = types.ModuleType("engine.logger")
    logger.get_logger = lambda *args, **kwargs: logging.getLogger("cmx_reference")
    engine = types.ModuleType("engine")
    engine.__path__ = []
    engine.logger = logger
    modules = {}
    with stand_in_modules({"engine": engine, "engine.logger": logger}), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm.models.layers is deprecated (still importable)
        for name, rel in _CMX_FILES.items():
            full = f"{tag}.{name}"
            spec = importlib.util.spec_from_file_location(full, root / rel)
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            spec.loader.exec_module(module)
            modules[name.rpartition(".")[2]] = module
    _cache[root] = modules
    return modules


class CMXReference(nn.Module):
    """The reference ``EncoderDecoder`` with the MLP decoder, as ``models/builder.py`` builds it: parameter names
    ``backbone.*`` / ``decode_head.*`` (those of released CMX checkpoints); no loss, no auxiliary head."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    def features(self, rgb: torch.Tensor, x3: torch.Tensor) -> list[torch.Tensor]:
        """The 4 fused stage maps (the FFM outputs)."""
        return self.backbone(rgb, x3)

    def forward(self, rgb: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        """``EncoderDecoder.encode_decode``: (B, 3, H, W) RGB and (B, 3, H, W) X → logits (B, K, H, W)."""
        out = self.decode_head(self.backbone(rgb, x3))
        return F.interpolate(out, size=rgb.shape[2:], mode="bilinear", align_corners=False)


def build_cmx_reference(reference_dir: str | Path, backbone: str = "mit_b2", num_classes: int = 40,
                        embed_dim: int = 512) -> nn.Module:
    """The reference CMX model (``RGBXTransformer`` ``mit_bX`` + MLP ``DecoderHead``) with its own random
    initialisation, in training mode like any new module.

    As in the reference's ``eval.py`` (``criterion=None``), the decode head's BatchNorms keep PyTorch's eps 1e-5
    (``train.py`` sets 1e-3 through ``init_weight``). ``mit_b1`` uses the ``mit_b1`` class (the reference's
    ``builder.py`` imports ``mit_b0`` for it, which cannot run with its 64-channel head).
    """
    if backbone not in _CMX_BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(_CMX_BACKBONES)}, got {backbone!r}")
    modules = load_cmx_modules(reference_dir)
    encoder = getattr(modules["dual_segformer"], backbone)(norm_fuse=nn.BatchNorm2d)
    channels = [32, 64, 160, 256] if backbone == "mit_b0" else [64, 128, 320, 512]
    head = modules["MLPDecoder"].DecoderHead(in_channels=channels, num_classes=num_classes,
                                             norm_layer=nn.BatchNorm2d, embed_dim=embed_dim)
    return CMXReference(encoder, head)


def cmx_to_rgbx(reference_model: nn.Module, modalities=("rgb", "depth")):
    """An rgbx ``cmx`` + ``mlp`` model holding ``reference_model``'s weights (converted with the ``cmx`` layout of
    :mod:`rgbx.models.convert`), in eval mode. The variant, classes and head width are read off the weights. The
    X path's 3-channel first conv is summed over its input channels for a 1-channel modality (depth): the result
    equals the reference fed that modality repeated 3 times."""
    from rgbx.models import create_model
    from rgbx.models.convert import convert_checkpoint, infer_model_options

    state = reference_model.state_dict()
    options = infer_model_options(state, "cmx")
    model = create_model(
        backbone=options["backbone"], fusion="cmx", head="mlp", modalities=list(modalities),
        num_classes=options["num_classes"], head_channels=options["head_channels"],
    )
    convert_checkpoint(state, model, layout="cmx")
    return model.eval()


@torch.no_grad()
def randomize(module: nn.Module, gen: torch.Generator, layer_scale: tuple[float, float] = (0.05, 0.3)) -> None:
    """Random values for every floating tensor of ``module``, so that a parity check exercises every path: weights
    ~ N(0, 1/fan_in), biases and BatchNorm running means ~ N(0, 0.1²), running variances U(0.5, 1.5), norm weights
    1 + N(0, 0.1²), layer scales U(``layer_scale``) instead of their tiny initial values."""
    lo, hi = layer_scale
    for name, t in module.state_dict().items():
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("layer_scale"):
            t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
        elif leaf == "running_var":
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
        elif leaf in ("running_mean", "bias"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
        elif t.dim() == 1:  # norm weights
            t.copy_(1 + torch.randn(t.shape, generator=gen) * 0.1)
        else:
            t.copy_(torch.randn(t.shape, generator=gen) / t[0].numel() ** 0.5)
