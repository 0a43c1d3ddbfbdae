"""Test-time inference: a single pass, or any combination of sliding-window inference and multi-scale +
horizontal-flip averaging.

* **Multi-scale + flip.** Each modality is resized in physical units by its own rule
  (``rgbx.data.transforms.resize_modality``: bilinear for dense images, nearest for depth, point-preserving for
  sparse LiDAR / events), so no invalid or interpolated sensor values are invented at other scales; the logits of
  every pass are resized back to the input size and their softmax probabilities averaged.
* **Sliding window** (:class:`SlidingWindow`). Each pass runs the model on fixed-size windows that step over the
  image by ``stride`` (the last window of a row or column is moved back to end at the image border, so every
  window lies inside the image), and averages the logits where windows overlap. A window larger than the image
  is clipped to it: nothing is padded, so no sensor value is invented. What CMX's and DFormer's evaluators and
  mmsegmentation's ``mode='slide'`` do, for images larger than the training crop (KITTI-360's 376×1408, MUSES'
  1080×1920) or a device with too little memory for the whole image. The windows are stacked into the batch,
  ``SlidingWindow.batch`` window positions per forward pass (8 by default; 1 runs them one at a time, as the
  references do), which gives the same logits in fewer, larger passes.
* **Flip** runs the image and its mirror image as one batch of twice the size.
* **Scale rules** (``scale_rule``, :data:`SCALE_RULES`): how a scale becomes a size and how inputs and logits are
  resized. ``rgbx`` (the default) is the rule above: round(h × s), each sensor by its own rule, logits back with
  ``align_corners=False``. ``dformer`` is DFormer's ``utils/val_mm.evaluate_msf``, to reproduce its published
  multi-scale numbers: the size is ``ceil(int(h × s) / 32) × 32`` (so even scale 1 resizes an image whose sides are
  not multiples of 32, e.g. SUN RGB-D's 530×730 to 544×736), every network input is resized bilinearly with
  ``align_corners=True`` (depth too), and so are the logits back. With a sliding window, an image smaller than the
  window on either side is first enlarged to the window's size, as DFormer's ``slide_inference`` does (rgbx's rule
  clips the window to the image instead); DFormer's stride is ``int(2/3 × window)``, e.g. ``--stride 320x426`` for a
  480×640 window (rgbx's default rounds up: 427).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rgbx.data.sample import PresenceMasks
from rgbx.data.transforms import resize_modality
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality

__all__ = ["SCALE_RULES", "SlidingWindow", "predict_logits", "scaled_size", "window_starts"]

SCALE_RULES = ("rgbx", "dformer")


@dataclass(frozen=True)
class SlidingWindow:
    """Window size and step, each (H, W) in pixels. ``stride=None``: two thirds of the window (rounded up), as
    CMX's and DFormer's evaluators (``stride_rate = 2/3``). ``batch``: window positions run in one forward pass
    (each a crop of every image in the batch), to trade memory for speed; the logits do not depend on it."""

    size: tuple[int, int]
    stride: tuple[int, int] | None = None
    batch: int = 8

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.size)
        stride = tuple(int(v) for v in self.stride) if self.stride is not None else tuple(-(-2 * s // 3) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"sliding window size {self.size}: expected (H, W), both >= 1")
        if len(stride) != 2 or min(stride) < 1:
            raise ConfigError(f"sliding window stride {self.stride}: expected (H, W), both >= 1")
        if stride[0] > size[0] or stride[1] > size[1]:
            raise ConfigError(f"sliding window stride {stride} exceeds the window {size}: pixels between windows "
                              "would never be predicted")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"sliding window batch {self.batch!r}: expected a whole number of windows >= 1")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of ``length`` pixels: every ``stride`` pixels, the last one
    moved back so that it ends at the border; one window at 0 when the window covers the whole axis."""
    if window >= length:
        return [0]
    count = -(-(length - window) // stride) + 1
    return [min(i * stride, length - window) for i in range(count)]


def _repeat_present(present: Mapping[str, torch.Tensor] | None, times: int) -> Mapping[str, torch.Tensor] | None:
    """Presence masks for ``times`` copies of the batch stacked one after the other (:class:`PresenceMasks` keep what
    the host knows, so the model still decides its branches without reading masks back from the device)."""
    if present is None or times == 1:
        return present
    if isinstance(present, PresenceMasks):
        return present.repeat(times)
    return {m: p.repeat(times) for m, p in present.items()}


def _slide(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
           present: Mapping[str, torch.Tensor] | None, window: SlidingWindow) -> torch.Tensor:
    """(B, K, H, W) logits averaged over the windows covering each pixel, ``window.batch`` window positions per
    forward pass (stacked window-major: the crops of every image at the first position, then the next)."""
    first = next(iter(inputs.values()))
    batch, (h, w) = first.shape[0], first.shape[-2:]
    wh, ww = min(window.size[0], h), min(window.size[1], w)
    ys, xs = window_starts(h, wh, window.stride[0]), window_starts(w, ww, window.stride[1])
    if len(ys) == len(xs) == 1:
        return model(inputs, present).logits
    positions = [(y, x) for y in ys for x in xs]
    total = count = None
    for start in range(0, len(positions), window.batch):
        group = positions[start:start + window.batch]
        crops = {m: torch.cat([v[..., y:y + wh, x:x + ww] for y, x in group]) for m, v in inputs.items()}
        logits = model(crops, _repeat_present(present, len(group))).logits.float()
        if total is None:
            total = logits.new_zeros(batch, logits.shape[1], h, w)
            count = logits.new_zeros(1, 1, h, w)
        for (y, x), part in zip(group, logits.split(batch)):
            total[..., y:y + wh, x:x + ww] += part
            count[..., y:y + wh, x:x + ww] += 1
    return total / count


def _rescale(name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    spec = get_modality(name)
    physical = spec.denormalize(x)
    resized = torch.stack([resize_modality(sample, size, spec) for sample in physical])
    return spec.normalize(resized)


def check_scale_rule(rule: str) -> str:
    if rule not in SCALE_RULES:
        raise ConfigError(f"scale rule {rule!r}: expected one of {', '.join(SCALE_RULES)}")
    return rule


def scaled_size(size: tuple[int, int], scale: float, rule: str = "rgbx") -> tuple[int, int]:
    """The input size at ``scale`` under ``rule`` (see the module docstring)."""
    h, w = size
    if check_scale_rule(rule) == "dformer":  # val_mm.evaluate_msf: int(), then up to a multiple of 32
        return tuple(int(math.ceil(int(scale * n) / 32)) * 32 for n in (h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def predict_logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                   present: Mapping[str, torch.Tensor] | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False, window: SlidingWindow | None = None, scale_rule: str = "rgbx") -> torch.Tensor:
    """(B, K, H, W) scores at the input size: the model's logits for one pass (whole image, or averaged over
    ``window``'s sliding windows), else the mean softmax probability over ``scales`` × (identity, horizontal
    flip), each pass sliding its windows over the rescaled image when ``window`` is given. ``scale_rule``: how a
    scale becomes a size and how inputs and logits are resized (:data:`SCALE_RULES`, module docstring)."""
    scales = tuple(float(s) for s in scales)
    reference = check_scale_rule(scale_rule) == "dformer"

    def one_pass(view: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        if window is None:
            return model(view, mask).logits
        vh, vw = next(iter(view.values())).shape[-2:]
        if reference and (window.size[0] > vh or window.size[1] > vw):  # DFormer's slide_inference: enlarge to it
            view = {m: F.interpolate(x, size=window.size, mode="bilinear", align_corners=True) for m, x in view.items()}
        return _slide(model, view, mask, window)

    h, w = next(iter(inputs.values())).shape[-2:]
    if scales == (1.0,) and not flip:
        logits = one_pass(inputs, present)
        if logits.shape[-2:] != (h, w):  # a window larger than the image, under the dformer rule
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
        return logits
    total = None
    for scale in scales:
        size = scaled_size((h, w), scale, scale_rule)
        if size == (h, w):
            scaled = dict(inputs)
        elif reference:  # every network input bilinearly, corners aligned, as DFormer's evaluate_msf
            scaled = {m: F.interpolate(x, size=size, mode="bilinear", align_corners=True) for m, x in inputs.items()}
        else:
            scaled = {m: _rescale(m, x, size) for m, x in inputs.items()}
        if flip:  # the image and its mirror image in one pass
            both = one_pass({m: torch.cat([x, x.flip(-1)]) for m, x in scaled.items()},
                            _repeat_present(present, 2))
            straight, mirrored = both.split(both.shape[0] // 2)
            passes = (straight, mirrored.flip(-1))
        else:
            passes = (one_pass(scaled, present),)
        for logits in passes:
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=reference)
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
