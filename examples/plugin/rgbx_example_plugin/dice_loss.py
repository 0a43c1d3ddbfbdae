"""Cross-entropy plus the soft Dice loss (Milletari et al., V-Net, 3DV 2016, eq. 1), a segmentation loss for every
rgbx method (``method.loss=ce_dice``):

    L      = CE(z, y) + λ · L_Dice(softmax(z), y)
    L_Dice = 1 − 1/K Σ_k (2 Σ_i p_ik g_ik + ε) / (Σ_i p_ik + Σ_i g_ik + ε)

over the labelled pixels i (the ignore index excluded) and the K classes, g the one-hot labels, ε = 1. Dice weighs
each class equally whatever its pixel count, which helps the rare classes plain cross-entropy neglects.
λ = :data:`DICE_WEIGHT`: a loss is built from the method config's shared keys (``method.label_smoothing``, ...), so a
loss's own constants live in its module (a method's own settings go in its ``Options``, as in :mod:`.consistency`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rgbx.methods.losses import SEGMENTATION_LOSSES, cross_entropy

DICE_WEIGHT = 1.0
SMOOTH = 1.0


def soft_dice_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int, smooth: float = SMOOTH) -> torch.Tensor:
    """1 − the mean over classes of the soft Dice coefficient, over the labelled pixels (module docstring)."""
    num_classes = logits.shape[1]
    valid = (label != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(label.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    dice = (2 * intersection + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return 1 - dice.mean()


@SEGMENTATION_LOSSES.register("ce_dice")
def build_ce_dice(config, ignore_index: int, class_weights: torch.Tensor | None):
    smoothing = float(getattr(config, "label_smoothing", 0.0) or 0.0)

    def loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        ce = cross_entropy(logits, label, ignore_index, class_weights, smoothing)
        return ce + DICE_WEIGHT * soft_dice_loss(logits, label, ignore_index)

    return loss
