"""SUN RGB-D (Song et al. 2015), 37-class labels, in the DFormer release layout; registered as ``"sunrgbd"``.

Layout (DFormer ``local_configs/_base_/datasets/SUNRGBD.py``)::

    SUNRGBD/
      RGB/<n>.jpg
      Depth/<n>.png        DFormer release: 8-bit relative depth (plt.imsave of the depth, per-image min-max)
      labels/<n>.png       note the lowercase folder; uint8, 0 = void, 1..37
      train.txt test.txt   5285 / 5050 samples; lines "RGB/<n>.jpg" (bare "<n>" and "<n>.jpg" accepted too)
      [HHA/<n>.png|jpg]    not in the DFormer release; used when present

Image sizes vary (the four sensors of SUN RGB-D); DFormer trains on 480×480 crops. rgbx loads images at their own
size; the option ``pad_to=[531,730]`` pads every file at the bottom and right to that size first, as DFormerv2's
evaluation does (``utils/eval.py --pad_SUNRGBD``, which DFormerv2 requires on SUN RGB-D: ``ValPre`` pads the image,
the depth image and the label with 0 by ``cv2.copyMakeBorder``): black RGB, the depth file's 0 and void labels.

Everything else follows :mod:`rgbx.data.datasets.nyu` (same options, same depth-format detection, ``val`` → test.txt
when there is no val.txt), with three SUN-specific points:

- **labels**: 0 = void → ignore 255, k → k − 1 (DFormer ``gt_transform=True``), 37 classes with DFormer's names.
- **16-bit depth**: the original SUN RGB-D toolbox stores depth in millimetres with a 3-bit circular shift
  (``read3dPoints.m``: ``bitor(bitshift(d, -3), bitshift(d, 16 - 3))``, then metres clipped to 8 m).
  ``depth_bitshift="auto"`` (default) undoes that shift, and clips at 8 m as the toolbox does, for files in which at
  least half the non-zero values are multiples of 8 (every shifted value below 8.192 m is one; about 1 in 8 plain
  millimetre values is), and reads other 16-bit files as plain millimetres; ``True`` / ``False`` force it. A rule
  of "all multiples of 8" would read a shifted file with one pixel beyond 8.19 m as plain millimetres, 8× too far.
- **intrinsics**: SUN RGB-D has one camera matrix per image (``intrinsics.txt`` in the original release, not in the
  DFormer one). For computed HHA rgbx uses ``intrinsics`` when given, else a guess per image of size H×W:
  ``fx = fy = 518.86 · W / 640`` (the Kinect v1 focal length scaled to the width), principal point at the centre.
  HHA computed with guessed intrinsics is approximate (heights and angles shift with the focal length error).

Palette: the VOC bit-interleaved colours by class (DFormer uses ``utils/nyucmap.npy`` for SUNRGBD too).
"""

from __future__ import annotations

import numpy as np

from rgbx.data.datasets.base import DATASETS, DecodeProblem
from rgbx.data.datasets.nyu import NYU_INTRINSICS, RGBDRelease
from rgbx.data.description import ModalitySource
from rgbx.errors import ConfigError

SUNRGBD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books",
    "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet", "sink",
    "lamp", "bathtub", "bag",
)


TOOLBOX_MAX_DEPTH = 8.0  # metres: read3dPoints.m clips the un-shifted depth here


def toolbox_shifted(depth: np.ndarray) -> bool:
    """Whether a 16-bit SUN RGB-D depth image holds the toolbox's circularly shifted millimetres: at least half its
    non-zero values are multiples of 8. Shifted values below 8.192 m all are (the pixels beyond have the high bits
    rotated into the low ones); plain millimetres are about one in eight."""
    nonzero = depth[depth != 0]
    return nonzero.size > 0 and 2 * np.count_nonzero((nonzero & 7) == 0) >= nonzero.size


@DATASETS.register("sunrgbd")
class SUNRGBD(RGBDRelease):
    """SUN RGB-D, 37 classes, DFormer layout (see the module docstring)."""

    NAME = "sunrgbd"
    LAYOUT = "the SUN RGB-D release of DFormer: RGB/, Depth/ and/or HHA/, labels/, train.txt and test.txt at the root"
    CLASSES = SUNRGBD_CLASSES
    SPLITS = ("train", "test")
    LABEL_FOLDERS = ("labels", "Label", "label", "Labels")
    OPTIONS = {**RGBDRelease.OPTIONS, "intrinsics": None, "depth_bitshift": "auto", "pad_to": None}

    def describe(self):
        shift = self.options["depth_bitshift"]
        if shift not in ("auto", True, False):
            raise ConfigError(f"data.options.depth_bitshift={shift!r}: expected 'auto', true or false")
        pad = self.options["pad_to"]
        self._pad_to = None
        if pad is not None:
            try:
                h, w = (int(v) for v in pad)
            except (TypeError, ValueError):
                h = w = 0
            if h < 1 or w < 1 or [h, w] != [float(v) for v in pad]:
                raise ConfigError(f"data.options.pad_to={pad!r}: expected [H, W], two whole numbers >= 1, e.g. "
                                  f"[531, 730] as DFormerv2's --pad_SUNRGBD")
            self._pad_to = (h, w)
        return super().describe()

    def _padded(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` (..., H, W) with zeros added at the bottom and right up to ``pad_to`` (unchanged without it)."""
        if self._pad_to is None:
            return raw
        (th, tw), (h, w) = self._pad_to, raw.shape[-2:]
        if h > th or w > tw:
            raise DecodeProblem("pad_to", f"pad_to={th}x{tw} is smaller than the {h}×{w} image")
        return np.pad(raw, [(0, 0)] * (raw.ndim - 2) + [(0, th - h), (0, tw - w)])

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        return super().decode_label(self._padded(raw))  # the padding's 0 is void → ignored

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        if name == "hha":  # HHA computed from the depth as it is (the camera's own size), then padded with 0
            return self._padded(super().decode_modality(name, raw))
        return super().decode_modality(name, self._padded(raw))

    def camera_intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        if self.options["intrinsics"] is not None:
            return super().camera_intrinsics(height, width)
        f = NYU_INTRINSICS[0] * width / 640.0
        return f, f, (width - 1) / 2.0, (height - 1) / 2.0

    def decode_depth(self, raw: np.ndarray, src: ModalitySource) -> np.ndarray:
        if self._depth_kind == "metric-16bit":
            shift = self.options["depth_bitshift"]
            v = raw[:1].astype(np.uint32)
            if shift is True or (shift == "auto" and toolbox_shifted(v)):
                v = ((v >> 3) | (v << 13)) & 0xFFFF
                return np.minimum(v.astype(np.float32) * np.float32(src.scale), np.float32(TOOLBOX_MAX_DEPTH))
            return v.astype(np.float32) * np.float32(src.scale)
        return super().decode_depth(raw, src)


__all__ = ["SUNRGBD", "SUNRGBD_CLASSES", "toolbox_shifted"]
