"""Tests for rgbx.visualize: palettes, colourising, modality renderings and panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rgbx.visualize import colorize, default_palette, make_panel, render_modality, save_image

H, W = 24, 32


def test_default_palette_is_voc_and_deterministic():
    pal = default_palette(21)
    assert len(pal) == 21 and pal == default_palette(21)
    assert pal[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert pal[15] == (192, 128, 128)  # VOC "person"
    assert len(set(default_palette(256))) == 256
    assert default_palette(300)[:21] == pal


def test_colorize_maps_classes_and_ignore():
    pal = default_palette(5)
    lab = np.arange(H * W).reshape(H, W) % 5
    lab[0, :3] = 255
    img = colorize(torch.from_numpy(lab), pal, ignore_index=255, ignore_color=(7, 8, 9))
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    for k in range(5):
        assert (img[lab == k] == pal[k]).all()
    assert (img[0, :3] == (7, 8, 9)).all()
    with pytest.raises(ValueError):
        colorize(np.full((2, 2), 9), pal)


@pytest.mark.parametrize(
    "name, channels", [("rgb", 3), ("depth", 1), ("thermal", 1), ("lidar", 1), ("event", 2)]
)
def test_render_modality_shapes(name, channels):
    x = torch.rand(channels, H, W) * 5
    img = render_modality(name, x)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert img.shape == render_modality(name, x.numpy()).shape


def test_render_rgb_depth_event_lidar_content():
    rgb = torch.zeros(3, H, W)
    rgb[0] = 1.0
    assert (render_modality("rgb", rgb) == (255, 0, 0)).all()

    depth = torch.full((1, H, W), 20.0)
    depth[0, :4] = 0.0  # invalid
    img = render_modality("depth", depth)
    assert (img[:4] == 0).all() and (img[4:].max(axis=2) > 50).all()
    near, far = (
        render_modality("depth", torch.full((1, 2, 2), 1.0)),
        render_modality("depth", torch.full((1, 2, 2), 39.0)),
    )
    assert not np.array_equal(near, far)

    ev = torch.zeros(2, H, W)
    ev[0, 5, 5], ev[1, 10, 10] = 4.0, 4.0
    img = render_modality("event", ev)
    assert tuple(img[5, 5]) == (255, 0, 0) and tuple(img[10, 10]) == (0, 0, 255)
    assert (img[0, 0] == 0).all()

    lidar = torch.zeros(1, H, W)
    lidar[0, 8, 8] = 30.0
    img = render_modality("lidar", lidar)
    lit = img.max(axis=2) > 0
    assert lit[7:10, 7:10].all() and lit.sum() == 9  # one point dilated to 3×3


def tile_count(panel: np.ndarray) -> int:
    """Number of tile columns in a one-row panel: W' = n * W + (n + 1) * gap."""
    gap = 4
    n = (panel.shape[1] - gap) / (W + gap)
    assert n == int(n)
    return int(n)


def test_panel_tiles_grow_with_modalities_and_label():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (H, W), generator=g)
    one = {"rgb": torch.rand(3, H, W, generator=g)}
    three = {**one, "depth": torch.rand(1, H, W, generator=g) * 30, "event": torch.zeros(2, H, W)}
    p1 = make_panel(one, pred)
    p3 = make_panel(three, pred)
    p3l = make_panel(three, pred, label=pred)
    for p in (p1, p3, p3l):
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3
    assert tile_count(p1) == 2 and tile_count(p3) == 4 and tile_count(p3l) == 6
    assert p1.shape[0] == p3.shape[0] == p3l.shape[0] > H
    # title and legend make it taller, not wider
    p = make_panel(three, pred, label=pred, class_names=["a", "b", "c", "d"], title="sample 1")
    assert p.shape[1] == p3l.shape[1] and p.shape[0] > p3l.shape[0]
    # wrapping into rows
    grid = make_panel(three, pred, label=pred, columns=3)
    assert tile_count(grid) == 3 and grid.shape[0] > p3l.shape[0]


def test_panel_error_map_red_exactly_where_wrong():
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 5, (H, W), generator=g)
    label[:3] = 255
    pred = label.clone()
    wrong = torch.rand(H, W, generator=g) < 0.3
    pred[wrong] = (pred[wrong] + 1) % 5
    pred[:3] = 0  # predictions under ignore never count as errors
    panel = make_panel({"rgb": torch.ones(3, H, W)}, pred, label=label)
    gap = 4
    y0 = panel.shape[0] - gap - H
    x0 = gap + 3 * (W + gap)  # tiles: rgb, prediction, ground truth, errors
    err = panel[y0 : y0 + H, x0 : x0 + W]
    assert x0 + W + gap == panel.shape[1]
    red = (err == (255, 0, 0)).all(axis=2)
    expected = (pred != label).numpy() & (label != 255).numpy()
    assert expected.any()
    assert np.array_equal(red, expected)
    assert (err[:3] == (128, 128, 128)).all()  # ignore is grey
    correct = ~expected & (label != 255).numpy()
    assert (err[correct].max(axis=1) < 128).all()  # correct pixels are dimmed

    # the prediction and ground-truth tiles are the colourised maps
    pal = default_palette(5)
    pred_tile = panel[y0 : y0 + H, gap + (W + gap) : gap + (W + gap) + W]
    assert np.array_equal(pred_tile, colorize(pred, pal))


def test_panel_confidence_tile_and_unsure_pixels():
    g = torch.Generator().manual_seed(2)
    label = torch.randint(0, 3, (H, W), generator=g)
    confidence = torch.rand(H, W, generator=g)
    pred = label.clone()
    pred[confidence < 0.3] = 255  # left unlabelled: not sure enough
    panel = make_panel({"rgb": torch.ones(3, H, W)}, pred, label=label, confidence=confidence)
    assert tile_count(panel) == 5  # rgb, prediction, confidence, ground truth, errors
    gap = 4
    y0 = panel.shape[0] - gap - H
    tile = lambda i: panel[y0 : y0 + H, gap + i * (W + gap) : gap + i * (W + gap) + W]  # noqa: E731
    assert (tile(1)[(pred == 255).numpy()] == 0).all()  # unlabelled pixels are black in the prediction
    unsure, sure = (pred == 255).numpy(), (pred != 255).numpy()
    assert (tile(4)[unsure] == (255, 191, 0)).all(axis=1).all()  # amber in the error map, not red
    assert not (tile(4)[sure] == (255, 191, 0)).all(axis=1).any()
    brightness = tile(2).astype(int).sum(axis=2)  # inferno: brighter = more confident
    order = np.argsort(confidence.numpy().ravel())
    assert brightness.ravel()[order[-20:]].mean() > brightness.ravel()[order[:20]].mean() + 200
    with pytest.raises(ValueError, match="confidence shape"):
        make_panel({"rgb": torch.ones(3, H, W)}, pred, confidence=confidence[:2])


def test_reliability_diagram_draws_accuracy_and_the_gap_to_confidence():
    from rgbx.visualize import reliability_image

    bins = [{"lower": i / 4, "upper": (i + 1) / 4, "pixels": 0, "confidence": None, "accuracy": None}
            for i in range(4)]
    bins[3].update(pixels=100, confidence=0.9, accuracy=0.5)  # over-confident: red between 0.5 and 0.9
    bins[1].update(pixels=50, confidence=0.4, accuracy=0.45)  # under-confident: green between 0.40 and 0.45
    image = reliability_image(bins, size=200)
    blue, red, green = (49, 130, 189), (222, 45, 38), (49, 163, 84)
    rows, cols = np.nonzero((image == red).all(axis=2))
    assert rows.max() - rows.min() + 1 == pytest.approx(0.4 * 200, abs=2)  # the gap: 0.9 - 0.5
    blue_rows = np.nonzero((image[:, cols.min()] == blue).all(axis=1))[0]
    assert blue_rows.max() - blue_rows.min() + 1 == pytest.approx(0.5 * 200, abs=2)  # the bar: accuracy 0.5
    assert blue_rows.min() == rows.max() + 1  # the red gap sits on the bar
    assert (image == green).all(axis=2).sum() > 0
    assert not (image[:, : cols.min() - 60] == red).all(axis=2).any()  # nothing red in the other bins
    titled = reliability_image(bins, title="rgb, calibrated", ece=0.1234, size=200)
    assert titled.shape[0] > image.shape[0] and titled.shape[1] == image.shape[1]


def test_save_image_roundtrip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = save_image(tmp_path / "sub" / "panel.png", img)
    assert np.array_equal(np.asarray(Image.open(path)), img)
    with pytest.raises(ValueError):
        save_image(tmp_path / "bad.png", img.astype(np.float32))
