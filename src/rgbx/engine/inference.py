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
  not multiples of 32, e.g. SUN RGB-D's 530×730 to 544×736, in a set of passes: one pass at scale 1 without flip is
  DFormer's plain ``evaluate``, the image at its own size), every network input is resized bilinearly with
  ``align_corners=True`` (depth too), and so are the logits back. With a sliding window, an image smaller than the
  window on either side is first enlarged to the window's size, as DFormer's ``slide_inference`` does (rgbx's rule
  clips the window to the image instead); DFormer's stride is ``int(2/3 × window)``, e.g. ``--stride 320x426`` for a
  480×640 window (rgbx's default rounds up: 427). ``cmx`` is CMX's ``engine/evaluator.sliding_eval_rgbX``, to
  reproduce its published "MS & Flip" numbers, and needs ``window`` (CMX's ``eval_crop_size``): see
  :func:`cmx_scores`.
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
from rgbx.models.input_encoding import InputEncoding

__all__ = ["SCALE_RULES", "SlidingWindow", "as_sliding_window", "class_probabilities", "cmx_scores", "predict_logits",
           "scaled_size", "single_pass", "pass_logits", "window_starts"]

SCALE_RULES = ("rgbx", "dformer", "cmx")


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


def as_sliding_window(window) -> SlidingWindow | None:
    """``window`` as a :class:`SlidingWindow`: None, a SlidingWindow, ``(H, W)`` in pixels or one number (a square
    window); anything else a :class:`ConfigError` saying so."""
    if window is None or isinstance(window, SlidingWindow):
        return window
    if isinstance(window, int) and not isinstance(window, bool):
        return SlidingWindow((window, window))
    if (isinstance(window, Sequence) and not isinstance(window, str) and len(window) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in window)):
        return SlidingWindow(tuple(window))
    raise ConfigError(f"window {window!r}: expected (H, W) in pixels, one number (a square window) or a "
                      f"rgbx.engine.inference.SlidingWindow (size, stride, batch)")


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
    window = as_sliding_window(window)
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
                   flip: bool = False, window: SlidingWindow | None = None, scale_rule: str = "rgbx",
                   temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """(B, K, H, W) scores at the input size: the model's logits for one pass (whole image, or averaged over
    ``window``'s sliding windows), else the mean softmax probability over ``scales`` × (identity, horizontal
    flip), each pass sliding its windows over the rescaled image when ``window`` is given. ``scale_rule``: how a
    scale becomes a size and how inputs and logits are resized (:data:`SCALE_RULES`, module docstring); ``"cmx"``
    returns CMX's summed exp scores (:func:`cmx_scores`). ``temperature`` divides each pass's logits
    (:mod:`rgbx.engine.calibration`): one number, or (B,) one per sample. Callers take the argmax."""
    scales = tuple(float(s) for s in scales)
    if check_scale_rule(scale_rule) == "cmx":
        if not _is_one(temperature):
            raise ConfigError(CMX_NOT_PROBABILITIES)
        return cmx_scores(model, inputs, present, scales, flip, window)
    passes = pass_logits(model, inputs, present, scales, flip, window, scale_rule)
    if single_pass(scales, flip):
        logits = next(passes)
        return logits if _is_one(temperature) else _divide(logits, temperature)
    total = None
    for logits in passes:
        probs = (logits.float() if _is_one(temperature) else _divide(logits, temperature)).softmax(1)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def pass_logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                     present: Mapping[str, torch.Tensor] | None = None, scales: Sequence[float] = (1.0,),
                     flip: bool = False, window: SlidingWindow | None = None, scale_rule: str = "rgbx"):
    """Each test-time pass's (B, K, H, W) logits at the input size, one at a time: per scale, the image (and with
    ``flip`` its mirror image, flipped back), each the whole image or ``window``'s sliding windows averaged
    (:func:`predict_logits` averages their softmax; not for the ``cmx`` rule)."""
    scales = tuple(float(s) for s in scales)
    if check_scale_rule(scale_rule) == "cmx":
        raise ConfigError(CMX_NOT_PROBABILITIES)
    reference = scale_rule == "dformer"

    def one_pass(view: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        if window is None:
            return model(view, mask).logits
        vh, vw = next(iter(view.values())).shape[-2:]
        if reference and (window.size[0] > vh or window.size[1] > vw):  # DFormer's slide_inference: enlarge to it
            view = {m: F.interpolate(x, size=window.size, mode="bilinear", align_corners=True) for m, x in view.items()}
        return _slide(model, view, mask, window)

    h, w = next(iter(inputs.values())).shape[-2:]
    if single_pass(scales, flip):
        logits = one_pass(inputs, present)
        if logits.shape[-2:] != (h, w):  # a window larger than the image, under the dformer rule
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
        yield logits
        return
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
            yield logits


CMX_NOT_PROBABILITIES = ("scale rule 'cmx' sums CMX's exp scores, which are not probabilities: confidences and "
                         "calibration need the rgbx or dformer rule")


def _is_one(temperature: float | torch.Tensor) -> bool:
    return not isinstance(temperature, torch.Tensor) and temperature == 1.0


def _divide(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``logits`` (N, K, H, W) / the temperature: a number, or (B,) per sample, N a multiple of B (a flip pass
    stacks the mirror images after the images)."""
    if not isinstance(temperature, torch.Tensor):
        return logits / temperature
    t = temperature.to(logits.device, torch.float32)
    return logits.float() / t.repeat(logits.shape[0] // t.shape[0]).view(-1, 1, 1, 1)


def single_pass(scales: Sequence[float], flip: bool) -> bool:
    """Whether :func:`predict_logits` returns one pass's logits (not averaged probabilities)."""
    return tuple(float(s) for s in scales) == (1.0,) and not flip


def class_probabilities(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                        present: Mapping[str, torch.Tensor] | None = None, scales: Sequence[float] = (1.0,),
                        flip: bool = False, window: SlidingWindow | None = None, scale_rule: str = "rgbx",
                        temperature: float | torch.Tensor = 1.0, scores: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K, H, W) float32 class probabilities: ``softmax(logits / temperature)`` of one pass, or their mean over
    the test-time passes; ``temperature``: one number, or (B,) one per sample (each sample's sensor set's). ``scores``:
    :func:`predict_logits`'s result for the same inputs at temperature 1, reused where it gives the answer without
    running the model again (one pass, or a temperature of 1)."""
    if check_scale_rule(scale_rule) == "cmx":
        raise ConfigError(CMX_NOT_PROBABILITIES)
    if single_pass(scales, flip):
        logits = scores if scores is not None else predict_logits(model, inputs, present, scales, flip, window,
                                                                  scale_rule)
        return _divide(logits.float(), temperature).softmax(1)
    if scores is not None and _is_one(temperature):
        return scores.float()
    return predict_logits(model, inputs, present, scales, flip, window, scale_rule, temperature).float()


def _network_zero(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per input, the (1, C, 1, 1) rgbx-normalised value that the model's network sees as 0
    (:meth:`rgbx.models.input_encoding.InputEncoding.zero`; 0 for a model without an input encoding). Read from the
    model's config, so an exported file run by :class:`~rgbx.engine.onnx_model.OnnxSegmentor`, whose graph applies
    the encoding, gets it too."""
    config = getattr(model, "config", None)
    encoding = None if config is None else InputEncoding(config.input_encoding, config.modalities)
    out = {}
    for name, x in inputs.items():
        zero = encoding.zero(name) if encoding is not None else (0.0,) * x.shape[1]
        if zero is None:
            raise ConfigError(f"scale rule 'cmx' pads with the network's zero input, which the model's input "
                              f"encoding of {name!r} cannot give (one sensor channel feeds network channels that "
                              "need different values); use the rgbx scale rule")
        out[name] = x.new_tensor(zero).view(1, -1, 1, 1)
    return out


def _cmx_resize(name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One input at one of CMX's scales: bilinear, no antialiasing (``cv2.INTER_LINEAR``), in float. OpenCV
    resizes CMX's 8-bit images in fixed point and rounds to 8 bits, so inputs differ by up to one level."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _cmx_padded_pass(model: torch.nn.Module, view: Mapping[str, torch.Tensor],
                     present: Mapping[str, torch.Tensor] | None, crop: tuple[int, int],
                     zero: Mapping[str, torch.Tensor], flip: bool) -> torch.Tensor:
    """CMX's ``process_image_rgbX`` + ``val_func_process_rgbX``: the view padded to at least ``crop``, centred (the
    odd pixel at the bottom / right), with the network's zero input; exp(logits [+ the mirror image's logits
    mirrored back]); the padding cut off again."""
    first = next(iter(view.values()))
    (h, w), (ch, cw) = first.shape[-2:], crop
    top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
    size = (max(ch, h), max(cw, w))
    padded = {}
    for name, x in view.items():
        if size == (h, w):
            padded[name] = x
            continue
        canvas = zero[name].to(x.dtype).expand(x.shape[0], -1, *size).clone()
        canvas[..., top:top + h, left:left + w] = x
        padded[name] = canvas
    if flip:  # two passes in one batch; CMX adds the logits before exp
        both = model({m: torch.cat([x, x.flip(-1)]) for m, x in padded.items()}, _repeat_present(present, 2))
        straight, mirrored = both.logits.float().split(first.shape[0])
        logits = straight + mirrored.flip(-1)
    else:
        logits = model(padded, present).logits.float()
    return logits.exp()[..., top:top + h, left:left + w]


def cmx_scores(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
               present: Mapping[str, torch.Tensor] | None, scales: Sequence[float], flip: bool,
               window: SlidingWindow | None) -> torch.Tensor:
    """(B, K, H, W) scores as CMX's ``engine/evaluator.sliding_eval_rgbX`` computes them; their argmax is its
    prediction. ``window`` is CMX's ``eval_crop_size`` (its stride ``ceil(2/3 × crop)``, rgbx's default).

    At each scale every input is resized bilinearly (OpenCV's ``INTER_LINEAR``, no antialiasing; CMX feeds even a
    one-channel sensor as three channels, so none is resized by nearest neighbour) to round(size × scale).
    ``scale_process_rgbX`` then takes one of two paths:

    * the scaled image no larger than the crop on at least one side: one pass over the image padded to the crop
      (:func:`_cmx_padded_pass`);
    * larger on both sides: windows, each padded and passed the same way, their scores summed where they overlap
      (not averaged). CMX counts the windows per axis correctly but places them with the crop's height and width
      swapped (``s_x`` steps by the height's stride, ``e_x = min(s_x + crop[0], width)``), and a window start that
      comes out negative indexes from the end of the axis (NumPy slicing). Reproduced as it is: on NYU Depth V2 with
      ``eval_crop_size`` 480×640 at scale 1.25 (600×800) the windows cover only the bottom 40 rows, so that scale
      scores only the bottom 32 rows of the image and CMX's "MS & Flip" (scales 0.75, 1, 1.25) is, above them,
      scales 0.75 and 1.

    Scores are exp(logits), the mirror image's logits added first, resized back bilinearly
    (``align_corners=False``) and summed over the scales."""
    window = as_sliding_window(window)
    if window is None:
        raise ConfigError("scale rule 'cmx' needs a window: CMX's eval_crop_size, e.g. --window 480x640 for NYU "
                          "Depth V2 and MFNet")
    zero = _network_zero(model, inputs)
    (ch, cw), (sh, sw) = window.size, window.stride
    first = next(iter(inputs.values()))
    batch, (h, w) = first.shape[0], first.shape[-2:]
    total = None
    for scale in scales:
        nh, nw = scaled_size((h, w), scale)
        scaled = dict(inputs) if (nh, nw) == (h, w) else {m: _cmx_resize(m, x, (nh, nw)) for m, x in inputs.items()}
        if nw <= cw or nh <= ch:
            score = _cmx_padded_pass(model, scaled, present, (ch, cw), zero, flip)
        else:
            score = None
            for gy in range(-(-(nh - ch) // sh) + 1):
                for gx in range(-(-(nw - cw) // sw) + 1):
                    x1 = min(gx * sh + ch, nw)  # CMX's x: the crop's height and stride (sic)
                    y1 = min(gy * sw + cw, nh)
                    rows, cols = slice(y1 - cw, y1), slice(x1 - ch, x1)  # a negative start counts from the end
                    part = _cmx_padded_pass(model, {m: x[..., rows, cols] for m, x in scaled.items()}, present,
                                            (ch, cw), zero, flip)
                    if score is None:
                        score = part.new_zeros(batch, part.shape[1], nh, nw)
                    score[..., rows, cols] += part
        if score.shape[-2:] != (h, w):
            score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
        total = score if total is None else total + score
    return total
