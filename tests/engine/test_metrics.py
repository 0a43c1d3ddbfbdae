import math

import torch

from rgbx.engine.metrics import ConfusionMatrix


def test_confusion_matrix_known_answer():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([0, 0, 1, 1, 255, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    cm.update(pred, target)
    m = cm.compute("present")
    # class 0: tp 1, fp 1 (from class 2), fn 1 → 1/3; class 1: tp 2, fp 1 → 2/3; class 2: tp 0 → 0
    assert [round(v, 4) for v in m.per_class_iou] == [round(1 / 3, 4), round(2 / 3, 4), 0.0]
    assert math.isclose(m.miou, (1 / 3 + 2 / 3 + 0) / 3)
    assert math.isclose(m.pixel_accuracy, 3 / 5)  # the ignored pixel is not counted


def test_conventions_differ_on_absent_classes():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert math.isclose(cm.compute("present").miou, 1.0)  # classes 2, 3 absent → left out
    assert math.isclose(cm.compute("all").miou, 0.5)  # counted as 0
    assert math.isnan(cm.compute("present").per_class_iou[2])
