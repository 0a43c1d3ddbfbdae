import math

import pytest
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


def test_confusion_shares_largest_confusions_and_csv():
    import csv
    import io

    cm = ConfusionMatrix(3)
    cm.matrix = torch.tensor([[90, 10, 0], [5, 80, 15], [0, 0, 0]])
    torch.testing.assert_close(cm.recall_shares()[1], torch.tensor([0.05, 0.8, 0.15], dtype=torch.float64))
    assert cm.recall_shares()[2].sum() == 0  # no ground-truth pixel of class 2
    assert cm.most_confused() == [(1, 2, 0.15, 15), (0, 1, 0.1, 10), (1, 0, 0.05, 5)]
    assert cm.most_confused(1) == [(1, 2, 0.15, 15)]
    rows = list(csv.reader(io.StringIO(cm.to_csv(["road", "car", "sky"]))))
    assert rows[0] == ["ground truth \\ prediction", "road", "car", "sky"]
    assert rows[2] == ["car", "5", "80", "15"] and len(rows) == 4


def test_confusion_image_shades_by_share_of_the_row():
    import numpy as np

    from rgbx.visualize import confusion_image

    img = confusion_image(torch.tensor([[99, 1], [50, 50]]), ["a", "b"], cell=20)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    with pytest.raises(ValueError, match=r"\(K, K\)"):
        confusion_image(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="3 class names for a 2-class"):
        confusion_image(torch.zeros(2, 2), ["a", "b", "c"])
    def holds(image, colour):
        return bool((image.reshape(-1, 3) == colour).all(1).any())

    full, half = (np.array([8, 48, 107]), np.array([132, 152, 181]))  # a share of 1, and of 0.5
    whole = confusion_image(torch.tensor([[5, 0], [0, 7]]), ["a", "b"], cell=20)  # counts differ, shares do not
    split = confusion_image(torch.tensor([[1, 1], [3, 3]]), ["a", "b"], cell=20)
    assert holds(whole, full) and not holds(whole, half)
    assert holds(split, half) and not holds(split, full)


def test_a_prediction_outside_the_classes_is_an_error_not_another_cell():
    """Class 3 predicted into a 3-class matrix was counted as (truth 1, prediction 0); with truth 2 it failed on
    the matrix's size. Predictions on ignored pixels are not scored, so they may be anything."""
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"predictions range over 3..3, outside the 3 classes 0..2"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="outside the 3 classes"):
        cm.update(torch.tensor([0, -1]), torch.tensor([1, 2]))
    cm.update(torch.tensor([7, 2]), torch.tensor([255, 2]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
