"""Segmentation metrics from one confusion matrix.

mIoU convention (default ``"present"``): the mean IoU over classes that occur in the ground truth or the prediction
of the evaluated set (a class with union 0 has no IoU and is left out — mmsegmentation's nanmean). ``"all"``
counts such classes as IoU 0 and averages over every class (DFormer's and DELIVER's ``NaN → 0`` mean:
``semseg/metrics.py`` sets NaN IoUs to 0 before the mean), for comparing with tables made that way. Pixels labelled
``ignore_index`` are never counted. A prediction outside ``0 .. num_classes - 1`` on a labelled pixel is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIOU_CONVENTIONS = ("present", "all")


def labelled(target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Boolean mask of the pixels that count: labelled with a class id (not ``ignore_index``, not out of range)."""
    return (target != ignore_index) & (target >= 0) & (target < num_classes)


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer tensors of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        k = self.num_classes
        valid = labelled(target, k, self.ignore_index)
        scored = pred[valid].to(torch.int64)
        if scored.numel():  # one read-back (counted as another cell of the matrix, or failing on its size, else)
            low, high = torch.stack(torch.aminmax(scored)).tolist()
            if low < 0 or high >= k:
                raise ValueError(f"predictions range over {low}..{high}, outside the {k} classes 0..{k - 1} of this "
                                 f"confusion matrix (a model with another class count?)")
        idx = target[valid].to(torch.int64) * k + scored
        self.matrix += torch.bincount(idx.cpu(), minlength=k * k).view(k, k)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def all_reduce(self) -> None:
        """Sum over ranks (one collective per evaluation)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            m = self.matrix.to(device)
            torch.distributed.all_reduce(m)
            self.matrix = m.cpu()

    def recall_shares(self) -> torch.Tensor:
        """(K, K) float64: row c = how the ground-truth pixels of class c were predicted, as shares summing to 1
        (a row of zeros for a class with no ground-truth pixel)."""
        m = self.matrix.double()
        return m / m.sum(1, keepdim=True).clamp(min=1)

    def most_confused(self, k: int = 10) -> list[tuple[int, int, float, int]]:
        """The ``k`` largest confusions: ``(true class, predicted class, share of the true class's pixels, pixel
        count)``, off the diagonal, largest share first (ties: more pixels first); pairs never confused are left
        out."""
        shares = self.recall_shares()
        pairs = [(int(a), int(b)) for a, b in (self.matrix > 0).nonzero().tolist() if a != b]
        pairs.sort(key=lambda ab: (-float(shares[ab]), -int(self.matrix[ab])))
        return [(a, b, float(shares[a, b]), int(self.matrix[a, b])) for a, b in pairs[:k]]

    def to_csv(self, class_names: list[str] | None = None) -> str:
        """The pixel counts as CSV: a header row of predicted classes, then one row per ground-truth class."""
        import csv
        import io

        names = list(class_names or [str(i) for i in range(self.num_classes)])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["ground truth \\ prediction", *names])
        for name, row in zip(names, self.matrix.tolist()):
            writer.writerow([name, *row])
        return out.getvalue()

    def compute(self, convention: str = "present") -> SegMetrics:
        if convention not in MIOU_CONVENTIONS:
            raise ValueError(f"unknown mIoU convention {convention!r}; expected one of {MIOU_CONVENTIONS}")
        m = self.matrix.double()
        tp = m.diag()
        gt, pr = m.sum(1), m.sum(0)
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        if convention == "present":
            miou = float(torch.nanmean(iou)) if (union > 0).any() else float("nan")
        else:
            miou = float(torch.nan_to_num(iou, nan=0.0).mean())
        total = float(m.sum())
        return SegMetrics(
            miou=miou,
            per_class_iou=[float(v) for v in iou],
            pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
            mean_accuracy=float(torch.nanmean(acc)) if (gt > 0).any() else float("nan"),
            pixels=int(total),
            convention=convention,
        )


@dataclass
class SegMetrics:
    miou: float
    per_class_iou: list[float]
    pixel_accuracy: float
    mean_accuracy: float
    pixels: int
    convention: str

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(len(self.per_class_iou))]
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "per_class_iou": {n: (None if v != v else v) for n, v in zip(names, self.per_class_iou)},
            "pixels": self.pixels,
            "miou_convention": self.convention,
        }
