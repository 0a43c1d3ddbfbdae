"""The segmentation loss against the labels, shared by every method (``method.loss`` in the config).

* ``ce``: pixel-wise cross-entropy averaged over the labelled pixels (class weights and label smoothing optional).
* ``ohem``: online hard example mining over the pixels (the loss of the DeLiVER / CMNeXt code base and of the
  methods trained with it). With ℓ_i the pixel losses of the batch and τ = -ln(p_thresh):

      H = {i : ℓ_i > τ}                                   (pixels whose true class has probability < p_thresh)
      L = mean_{i ∈ H} ℓ_i                  if |H| ≥ n_min,  n_min = ⌊min_kept · #labelled pixels⌋
      L = mean of the n_min largest ℓ_i     otherwise

  computed without reading anything back to the host (so a captured CUDA-graph step can use it): the losses are
  sorted once, and the kept set is the sorted positions that lie above τ or among the first n_min, which is H when
  |H| ≥ n_min and the n_min largest otherwise. A batch with no pixel kept gives 0, not NaN.

Each loss registers by name in :data:`SEGMENTATION_LOSSES` as a builder ``(method_config, ignore_index,
class_weights) -> loss(logits, label)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from rgbx.errors import ConfigError
from rgbx.registry import Registry

SegmentationLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SEGMENTATION_LOSSES: Registry[Callable[..., SegmentationLoss]] = Registry("segmentation loss")


def _pixel_losses(logits: torch.Tensor, label: torch.Tensor, ignore_index: int, weight: torch.Tensor | None,
                  label_smoothing: float) -> torch.Tensor:
    """Per-pixel (weighted) cross-entropy in float32; 0 at ignored pixels."""
    return F.cross_entropy(logits.float(), label, weight=weight, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none")


def cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int,
                  class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Pixel-wise (weighted) cross-entropy averaged over labelled pixels; 0 (not NaN) when a batch has none."""
    weight = None if class_weights is None else class_weights.to(logits.device)
    total = F.cross_entropy(logits.float(), label, weight=weight, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, reduction="sum")
    valid = label != ignore_index
    if weight is None:
        norm = valid.sum()
    else:
        norm = weight[label.clamp(0, len(weight) - 1)].masked_fill(~valid, 0).sum()
    return total / norm.clamp(min=1e-6)


def ohem_cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int,
                       class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0, *,
                       thresh: float = 0.7, min_kept: float = 1 / 16) -> torch.Tensor:
    """Online hard example mining cross-entropy (module docstring): the mean loss over the pixels whose true class
    has probability below ``thresh``, or over the ``min_kept`` fraction of labelled pixels with the largest losses
    when fewer are that hard. Class weights scale each pixel's loss (the mean is not re-weighted)."""
    weight = None if class_weights is None else class_weights.to(logits.device)
    losses = _pixel_losses(logits, label, ignore_index, weight, label_smoothing).flatten()
    scale = 2**20  # n_min in integers: exactly ⌊count / 16⌋ for min_kept = 1/16
    n_min = (label != ignore_index).sum() * round(min_kept * scale) // scale
    ranked = losses.sort(descending=True).values
    position = torch.arange(ranked.numel(), device=ranked.device)
    kept = (ranked > -math.log(thresh)) | (position < n_min)  # H if |H| ≥ n_min, else the n_min largest
    return (ranked * kept).sum() / kept.sum().clamp(min=1)


@SEGMENTATION_LOSSES.register("ce")
def build_cross_entropy(config, ignore_index: int, class_weights: torch.Tensor | None) -> SegmentationLoss:
    smoothing = float(getattr(config, "label_smoothing", 0.0) or 0.0)

    def loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, label, ignore_index, class_weights, smoothing)

    return loss


@SEGMENTATION_LOSSES.register("ohem")
def build_ohem_cross_entropy(config, ignore_index: int, class_weights: torch.Tensor | None) -> SegmentationLoss:
    smoothing = float(getattr(config, "label_smoothing", 0.0) or 0.0)
    thresh, min_kept = float(config.ohem_thresh), float(config.ohem_min_kept)
    if not 0.0 < thresh <= 1.0:
        raise ConfigError(f"method.ohem_thresh is a probability in (0, 1] (pixels whose true class is less likely "
                          f"are hard), got {thresh}")
    if not 0.0 <= min_kept <= 1.0:
        raise ConfigError(f"method.ohem_min_kept is the fraction of labelled pixels always kept, in [0, 1], "
                          f"got {min_kept}")

    def loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(logits, label, ignore_index, class_weights, smoothing, thresh=thresh,
                                  min_kept=min_kept)

    return loss


def build_segmentation_loss(config, ignore_index: int = 255,
                            class_weights: torch.Tensor | None = None) -> SegmentationLoss:
    """The loss ``config.loss`` names (a method config; ``ce`` when it names none)."""
    return SEGMENTATION_LOSSES.get(getattr(config, "loss", None) or "ce")(config, ignore_index, class_weights)
