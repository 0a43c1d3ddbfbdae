"""Pictures of samples and predictions: palettes, per-modality renderings and labelled panels.

Everything here returns ``uint8`` arrays of shape (H, W, 3) so the result can be saved (:func:`save_image`), logged
to TensorBoard or shown in a notebook. No matplotlib: the turbo and inferno colour maps are built from ten anchor
colours each (the published 10-step samples of those maps) with linear interpolation.

How a modality is drawn comes from its :class:`~rgbx.modalities.ModalitySpec`: ``colormap`` ("rgb", "gray", "turbo",
"inferno", "polarity") and ``display_range`` (physical range mapped onto the colour map; None = the image's own
min/max over valid pixels). Pixels equal to the spec's ``invalid_value`` are black; sparse maps (LiDAR, events) have
their points dilated to 3×3 so they are visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from rgbx.data.description import default_palette
from rgbx.modalities import ModalitySpec, get_modality

Color = tuple[int, int, int]

__all__ = ["colorize", "confusion_image", "default_palette", "make_panel", "reliability_image", "render_modality",
           "save_image"]

# 10 evenly spaced samples (t = 0, 1/9, ..., 1) of each colour map
_ANCHORS = {
    "turbo": [
        "30123b", "4662d7", "36aaf9", "1ae4b6", "72fe5e", "c7ef34", "faba39", "f66b19", "cb2a04", "7a0403",
    ],
    "inferno": [
        "000004", "1b0c42", "4b0c6b", "781c6d", "a52c60", "cf4446", "ed6925", "fb9a06", "f7d03c", "fcffa4",
    ],
}  # fmt: skip

ERROR_COLOR: Color = (255, 0, 0)
IGNORE_GREY: Color = (128, 128, 128)
ABSTAIN_COLOR: Color = (255, 191, 0)  # a pixel left unlabelled for low confidence (error map)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(
    label,
    palette: Sequence[Color] | None = None,
    ignore_index: int = 255,
    ignore_color: Color = (0, 0, 0),
) -> np.ndarray:
    """Class-id map (H, W) → colour image (H, W, 3) uint8: class ``k`` gets ``palette[k]``, ``ignore_index`` gets
    ``ignore_color``. Other ids outside the palette raise ``ValueError``.

    Args:
        label: integer array or tensor (H, W).
        palette: list of (r, g, b); default :func:`default_palette` sized to the largest id.
    """
    lab = _numpy(label).astype(np.int64)
    if lab.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) label map, got shape {lab.shape}")
    ignore = lab == ignore_index
    if palette is None:
        palette = default_palette(int(lab[~ignore].max()) + 1 if (~ignore).any() else 1)
    lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    bad = ~ignore & ((lab < 0) | (lab >= len(lut)))
    if bad.any():
        raise ValueError(
            f"label ids {sorted(set(lab[bad].tolist()))[:10]} have no colour in a palette of {len(lut)} "
            f"(ignore_index={ignore_index})"
        )
    out = lut[np.where(ignore, 0, lab)]
    out[ignore] = ignore_color
    return out


def _lut(name: str) -> np.ndarray:
    """256 × 3 uint8 lookup table of a colour map."""
    t = np.linspace(0.0, 1.0, 256)
    if name == "gray":
        v = np.round(t * 255)
        return np.stack([v, v, v], axis=1).astype(np.uint8)
    anchors = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _ANCHORS[name]], dtype=np.float64)
    pos = np.linspace(0.0, 1.0, len(anchors))
    return np.stack([np.round(np.interp(t, pos, anchors[:, c])) for c in range(3)], axis=1).astype(np.uint8)


def _scale01(v: np.ndarray, valid: np.ndarray, display_range) -> np.ndarray:
    if display_range is None:
        if not valid.any():
            return np.zeros_like(v)
        lo, hi = float(v[valid].min()), float(v[valid].max())
    else:
        lo, hi = (float(a) for a in display_range)
    if hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


def _dilate(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Grow each valid pixel into its 3×3 neighbourhood (valid pixels keep their own colour)."""
    h, w = valid.shape
    out, filled = img.copy(), valid.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            src_img = np.zeros_like(img)
            src_ok = np.zeros_like(valid)
            ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            src_img[yd, xd] = img[ys, xs]
            src_ok[yd, xd] = valid[ys, xs]
            take = src_ok & ~filled
            out[take] = src_img[take]
            filled |= take
    return out


def render_modality(name: str, x, spec: ModalitySpec | None = None) -> np.ndarray:
    """Draw one modality, (C, H, W) (or (H, W)) in physical units, as an (H, W, 3) uint8 image.

    ``rgb`` → the first three channels over ``display_range``; ``gray`` / ``turbo`` / ``inferno`` → channel 0
    through the colour map, invalid pixels black; ``polarity`` → channel 0 (positive events) red, channel 1
    (negative) blue on black (a single signed channel: positive red, negative blue). Sparse maps are dilated 3×3.

    Args:
        name: registered modality name (its spec decides the drawing).
        x: tensor or array.
        spec: use this spec instead of looking ``name`` up.
    """
    spec = spec or get_modality(name)
    a = _numpy(x).astype(np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"render_modality({name!r}) expects (C, H, W), got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    cmap = spec.colormap
    valid = np.ones(a.shape[1:], dtype=bool)
    if spec.invalid_value is not None:
        valid = (a != spec.invalid_value).any(axis=0)
    if cmap == "rgb":
        chans = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
        v = _scale01(chans, np.broadcast_to(valid, chans.shape), spec.display_range)
        img = np.round(v * 255).astype(np.uint8).transpose(1, 2, 0)
    elif cmap in ("gray", "turbo", "inferno"):
        v = _scale01(a[0], valid, spec.display_range)
        img = _lut(cmap)[np.round(v * 255).astype(np.int64)]
    elif cmap == "polarity":
        if a.shape[0] >= 2:
            pos, neg = np.abs(a[0]), np.abs(a[1])
        else:
            pos, neg = np.clip(a[0], 0, None), np.clip(-a[0], 0, None)
        hi = spec.display_range[1] if spec.display_range else max(float(pos.max()), float(neg.max()), 1e-12)
        img = np.zeros((*a.shape[1:], 3), dtype=np.uint8)
        img[..., 0] = np.round(np.clip(pos / hi, 0, 1) * 255)
        img[..., 2] = np.round(np.clip(neg / hi, 0, 1) * 255)
        valid = (pos > 0) | (neg > 0)
    else:
        raise ValueError(
            f"modality {name!r}: unknown colormap {cmap!r} (known: rgb, gray, turbo, inferno, polarity)"
        )
    img = np.where(valid[..., None], img, 0).astype(np.uint8)
    if spec.sparse:
        img = _dilate(img, valid)
    return img


def _error_map(
    prediction: np.ndarray, label: np.ndarray, ignore_index: int, base: np.ndarray | None
) -> np.ndarray:
    """Correct pixels: a dimmed grey copy of ``base`` (or near-black), wrong: red, left unlabelled by the prediction
    (``ignore_index`` there): amber, ignore in the label: grey."""
    if base is None:
        img = np.full((*label.shape, 3), 24, dtype=np.uint8)
    else:
        gray = base.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = np.repeat(np.round(gray * 0.35).astype(np.uint8)[..., None], 3, axis=2)
    ignore = label == ignore_index
    img[(prediction != label) & ~ignore] = ERROR_COLOR
    img[(prediction == ignore_index) & ~ignore] = ABSTAIN_COLOR
    img[ignore] = IGNORE_GREY
    return img


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _fit(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.NEAREST))


def make_panel(
    inputs: Mapping[str, object],
    prediction,
    label=None,
    palette: Sequence[Color] | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str | None = None,
    columns: int | None = None,
    legend: bool = True,
    confidence=None,
) -> np.ndarray:
    """One image showing a sample: each input modality, the prediction, (with ``confidence``) the confidence map and
    (with a label) the ground truth and an error map (correct = dimmed grey image, wrong = red, ignore = grey, a
    pixel the prediction left unlabelled = amber); each tile has a caption.

    Args:
        inputs: modality name → (C, H, W) physical units (tensor or array), drawn in this order.
        prediction: (H, W) class ids.
        label: (H, W) class ids with ``ignore_index`` for unlabelled pixels, or None.
        palette: class colours; default :func:`default_palette` for ``len(class_names)`` or the largest id.
        class_names: names for the legend strip (classes present in prediction or label); no legend without them.
        ignore_index: unlabelled id in ``label`` (white in the ground-truth tile, grey in the error map; the
            background is light grey).
        title: text strip above the tiles.
        columns: tiles per row (default: all in one row).
        legend: draw the legend strip when ``class_names`` is given.
        confidence: (H, W) confidence 0-1 of each predicted pixel, drawn through the inferno map (dark = unsure). A
            predicted pixel equal to ``ignore_index`` (left unlabelled, e.g. below ``rgbx predict --min-confidence``)
            is black in the prediction tile.

    Returns:
        (H', W', 3) uint8. With one row, ``W' = n_tiles * W + (n_tiles + 1) * gap``.
    """
    pred = _numpy(prediction).astype(np.int64)
    if pred.ndim != 2:
        raise ValueError(f"prediction must be (H, W), got shape {pred.shape}")
    lab = None if label is None else _numpy(label).astype(np.int64)
    if lab is not None and lab.shape != pred.shape:
        raise ValueError(f"label shape {lab.shape} differs from prediction shape {pred.shape}")
    if palette is None:
        top = int(pred.max(initial=0))
        if lab is not None and (lab != ignore_index).any():
            top = max(top, int(lab[lab != ignore_index].max()))
        palette = default_palette(max(len(class_names or []), top + 1))
    hw = pred.shape

    tiles: list[tuple[str, np.ndarray]] = []
    rgb_base = None
    for name, x in inputs.items():
        img = _fit(render_modality(name, x), hw)
        if rgb_base is None and get_modality(name).colormap == "rgb":
            rgb_base = img
        tiles.append((name, img))
    tiles.append(("prediction", colorize(pred, palette, ignore_index=ignore_index)))
    if confidence is not None:
        conf = _numpy(confidence).astype(np.float32)
        if conf.shape != pred.shape:
            raise ValueError(f"confidence shape {conf.shape} differs from prediction shape {pred.shape}")
        tiles.append(("confidence", _lut("inferno")[np.round(np.clip(conf, 0, 1) * 255).astype(np.int64)]))
    if lab is not None:
        tiles.append(("ground truth", colorize(lab, palette, ignore_index, ignore_color=(255, 255, 255))))
        tiles.append(("errors", _error_map(pred, lab, ignore_index, rgb_base)))

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(_text_size(probe, "Ag", font)[1], 8)
    gap, caption_h = 4, text_h + 6
    h, w = hw
    cols = len(tiles) if not columns else max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    width = cols * w + (cols + 1) * gap
    title_h = caption_h + gap if title else 0
    grid_h = rows * (caption_h + h) + (rows + 1) * gap

    legend_items: list[tuple[str, Color]] = []
    if legend and class_names:
        present = set(np.unique(pred).tolist())
        if lab is not None:
            present |= set(np.unique(lab[lab != ignore_index]).tolist())
        legend_items = [
            (class_names[k], tuple(palette[k])) for k in sorted(present) if 0 <= k < len(class_names)
        ]
    legend_lines = []
    if legend_items:
        sw = text_h  # swatch size
        line, x = [], gap
        for text, color in legend_items:
            item_w = sw + 3 + _text_size(probe, text, font)[0] + 2 * gap
            if line and x + item_w > width:
                legend_lines.append(line)
                line, x = [], gap
            line.append((x, text, color))
            x += item_w
        legend_lines.append(line)
    legend_h = len(legend_lines) * (text_h + 4) + (gap if legend_lines else 0)

    canvas = Image.new("RGB", (width, title_h + grid_h + legend_h), (230, 230, 230))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap + 2), title, fill=(0, 0, 0), font=font)
    for i, (caption, img) in enumerate(tiles):
        r, c = divmod(i, cols)
        x0 = gap + c * (w + gap)
        y0 = title_h + gap + r * (caption_h + h + gap)
        draw.text((x0 + 1, y0 + 2), caption, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(img), (x0, y0 + caption_h))
    y = title_h + grid_h
    for line in legend_lines:
        for x, text, color in line:
            draw.rectangle([x, y, x + text_h - 1, y + text_h - 1], fill=color, outline=(0, 0, 0))
            draw.text((x + text_h + 3, y), text, fill=(0, 0, 0), font=font)
        y += text_h + 4
    return np.asarray(canvas, dtype=np.uint8).copy()


def confusion_image(matrix, class_names: Sequence[str] | None = None, cell: int | None = None,
                    title: str | None = None) -> np.ndarray:
    """A confusion matrix drawn as a grid: row = ground-truth class, column = predicted class, each cell shaded
    from white (none) to dark blue (all) by the share of the row's pixels it holds, so every class reads on the
    same scale however rare it is; the diagonal is outlined. Cells large enough for text show shares of at least
    1 % in per cent.

    Args:
        matrix: (K, K) pixel counts (tensor or array), rows = ground truth.
        class_names: row / column labels (default: the class ids).
        cell: cell size in pixels (default: 26 up to 25 classes, with the per cent written; 16 beyond).
        title: text strip above the grid.

    Returns:
        (H, W, 3) uint8.
    """
    counts = _numpy(matrix).astype(np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is (K, K), got shape {counts.shape}")
    k = counts.shape[0]
    names = [str(n) for n in (class_names or range(k))]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    cell = cell or (26 if k <= 25 else 16)

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(_text_size(probe, "Ag", font)[1], 8)
    gap = 4
    label_w = max(_text_size(probe, n, font)[0] for n in names) + 2 * gap
    head_h = (text_h + 2 * gap if title else 0) + label_w  # the column labels are written upwards
    caption = "rows: ground truth, columns: prediction, % of the row"
    width = max(label_w + k * cell + gap, _text_size(probe, caption, font)[0] + 2 * gap)
    height = head_h + gap + k * cell + text_h + 3 * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill=(0, 0, 0), font=font)
    top = head_h + gap
    draw.text((gap, top + k * cell + gap), caption, fill=(0, 0, 0), font=font)
    dark = np.array([8, 48, 107], np.float64)  # dark blue at a share of 1
    for i in range(k):
        y = top + i * cell
        draw.text((gap, y + (cell - text_h) // 2), names[i], fill=(0, 0, 0), font=font)
        for j in range(k):
            x = label_w + j * cell
            colour = tuple(int(round(c)) for c in 255 + (dark - 255) * shares[i, j])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour,
                           outline=(0, 0, 0) if i == j else (220, 220, 220))
            if shares[i, j] >= 0.01 and cell >= 2 * text_h:
                pct = f"{100 * shares[i, j]:.0f}"
                tw, th = _text_size(draw, pct, font)
                draw.text((x + (cell - tw) // 2, y + (cell - th) // 2), pct,
                          fill=(255, 255, 255) if shares[i, j] > 0.5 else (0, 0, 0), font=font)
    for j, name in enumerate(names):  # column labels: drawn across, then turned upwards
        tw, th = _text_size(probe, name, font)
        strip = Image.new("RGB", (label_w, text_h + 2), (255, 255, 255))
        ImageDraw.Draw(strip).text((label_w - tw - gap, 0), name, fill=(0, 0, 0), font=font)
        turned = strip.rotate(90, expand=True)
        canvas.paste(turned, (label_w + j * cell + (cell - turned.width) // 2, head_h - label_w))
    return np.asarray(canvas, dtype=np.uint8).copy()


def reliability_image(bins: Sequence[Mapping], title: str | None = None, size: int = 200,
                      ece: float | None = None) -> np.ndarray:
    """A reliability diagram: for each confidence bin (equal widths over 0-1), a bar as high as the accuracy of its
    pixels (blue), the gap to their mean confidence shaded (red: over-confident, the bar below the confidence; green:
    under-confident), the diagonal of perfect calibration, and under it each bin's share of the pixels (grey).

    Args:
        bins: per bin, ``lower``, ``upper``, ``pixels``, ``confidence`` and ``accuracy`` (0-1; None for an empty
            bin): :class:`rgbx.engine.calibration.CalibrationMetrics`'s ``bins``.
        title: text strip above the plot.
        size: the plot's side in pixels.
        ece: written in the corner (0-1) when given.

    Returns:
        (H, W, 3) uint8.
    """
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(_text_size(probe, "Ag", font)[1], 8)
    gap, share_h = 4, max(size // 5, 12)
    left = _text_size(probe, "1.0", font)[0] + 2 * gap
    title_h = text_h + 2 * gap if title else 0
    width = left + size + 2 * gap
    height = title_h + size + gap + share_h + text_h + 3 * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill=(0, 0, 0), font=font)
    top = title_h
    x_of = lambda v: left + round(v * size)  # noqa: E731
    y_of = lambda v: top + size - round(v * size)  # noqa: E731
    draw.rectangle([left, top, left + size, top + size], outline=(0, 0, 0))
    total = max(sum(int(b["pixels"]) for b in bins), 1)
    most = max(max(int(b["pixels"]) for b in bins), 1) if bins else 1
    base = top + size + gap + share_h
    for b in bins:
        x0, x1 = x_of(float(b["lower"])) + 1, x_of(float(b["upper"])) - 1
        if b.get("accuracy") is not None:
            acc, conf = float(b["accuracy"]), float(b["confidence"])
            draw.rectangle([x0, y_of(acc), x1, top + size], fill=(49, 130, 189))
            if abs(conf - acc) * size >= 1:
                colour = (222, 45, 38) if conf > acc else (49, 163, 84)
                draw.rectangle([x0, y_of(max(conf, acc)), x1, y_of(min(conf, acc))], fill=colour)
        if int(b["pixels"]):
            draw.rectangle([x0, base - max(1, round(share_h * int(b["pixels"]) / most)), x1, base],
                           fill=(150, 150, 150))
    draw.line([x_of(0), y_of(0), x_of(1), y_of(1)], fill=(0, 0, 0), width=1)
    for v in (0.0, 0.5, 1.0):
        label = f"{v:.1f}"
        draw.text((gap, y_of(v) - text_h // 2), label, fill=(0, 0, 0), font=font)
    caption = f"x: confidence, bars: accuracy; {total} px"
    if ece is not None:
        draw.text((left + gap, top + gap), f"ECE {100 * ece:.2f}%", fill=(0, 0, 0), font=font)
    draw.text((left, base + gap), caption, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image (PNG, JPEG, … by extension); parent folders are created."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_image expects an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
