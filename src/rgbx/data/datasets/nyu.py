"""NYU Depth V2 (Silberman et al. 2012), 40-class labels, read from the DFormer / CMX / SA-Gate release layout;
registered as ``"nyudepthv2"``. Also the shared base of the adapters that read public releases in their own
layouts (:class:`ReleaseDataset`, used by ``sunrgbd``, ``mfnet`` and ``pst900``).

Layout (the folder called ``NYUDepthv2`` in the releases)::

    NYUDepthv2/
      RGB/<n>.jpg          colour, 640x480
      Depth/<n>.png        DFormer release: 8-bit *relative* depth (see below)
      Depth/<n>.npy        SA-Gate release: float32 metres (inpainted)
      HHA/<n>.jpg          CMX / SA-Gate release: HHA, 3-channel 8-bit
      Label/<n>.png        uint8, 0 = void, 1..40 = classes
      train.txt test.txt   795 / 654 samples

Split-file lines differ between the releases; every form is accepted (the sample id is the file stem of the first
whitespace-separated token):

- DFormer (``utils/dataloader/RGBXDataset.py`` ``get_path``: ``item_name.split("/")[1].split(".jpg")[0]``):
  ``RGB/<n>.jpg``;
- SA-Gate (charlesCXK/RGBD_Semantic_Segmentation_PyTorch ``DATA/NYUDepthv2/train.txt``):
  ``RGB/<n>.jpg<TAB>Label/<n>.png``;
- CMX (huaaaliu/RGBX_Semantic_Segmentation ``dataloader/RGBXDataset.py``: ``item_name + format``) and DELIVER
  (``semseg/datasets/nyu.py``): bare ``<n>``.

Labels: 0 = void → ignore index 255, k → k − 1 (40 classes; CMX / DFormer ``gt_transform``: ``gt - 1`` on uint8).
A raw 255 is also void (DELIVER maps 255 → 0 before the − 1). Palette: the PASCAL-VOC bit-interleaved colours
indexed by class (DFormer ``utils/nyucmap.npy`` and CMX ``get_class_colors``), i.e. :func:`default_palette`.

Depth — where the releases disagree, and what rgbx does:

- SA-Gate ships ``Depth/<n>.npy``, float32 metres (in-painted: no holes). CMX's NYU data is SA-Gate's (CMX issue
  #16) and its configs read ``HHA/*.jpg`` only.
- DFormer ships ``Depth/<n>.png`` made with ``plt.imsave(path, np.load(depth), cmap="Greys_r")`` (README): an
  8-bit image (RGBA when written by matplotlib) of depth *min-max normalised per image* (0 = nearest pixel of that
  image, 255 = farthest). It is not metric and the per-image range is lost.
- Converted copies in the wild are 16-bit PNGs (millimetres, or 0.1 mm from charlesCXK/Depth2HHA-python).

With ``depth_format="auto"`` (default) the format of the first ``Depth/`` file decides: float (``.npy`` or float
TIFF) → metres; 16-bit → × ``depth_scale`` (default 0.001, millimetres); 8-bit (1, 2, 3 or 4 channels, gray) →
*relative*: ``depth = near + v / 255 · (far − near)`` with ``relative_depth_range=(near, far)`` (default
(0.5, 10.0) m, the Kinect's range). That keeps the DFormer release usable as ``depth`` (networks see the same
0-1 ramp DFormer feeds them) but the values are NOT metres: ``description.extra["depth_encoding"]`` says
``"relative-8bit"``, no HHA is computed from it, and ``depth_format="metric"`` refuses such files instead.
Colour-mapped (non-gray) 8-bit depth and other dtypes raise a :class:`DataError`.

HHA: read from ``HHA/`` when present (``hha_source="auto"``); otherwise computed on the fly from metric depth with
NYU's colour-camera intrinsics (NYU toolbox ``camera_params.m``: fx 518.858, fy 519.470, cx 325.582, cy 253.736,
1-based → 324.582 / 252.736 here) by :mod:`rgbx.data.hha`. ``hha_cache=DIR`` writes each computed HHA once to
``DIR/<n>.png`` (computed for the whole split when the dataset is opened with a check). With relative (8-bit)
depth and no ``HHA/`` folder, ``hha`` is not offered.

Options (``data.options``): ``depth_format`` ("auto" | "metric" | "relative"), ``depth_scale`` (metres per unit of
16-bit depth), ``relative_depth_range``, ``hha_source`` ("auto" | "folder" | "compute"), ``hha_cache`` (folder or
None), ``intrinsics`` ((fx, fy, cx, cy) for computed HHA), ``hha_options`` (keyword arguments of
:func:`rgbx.data.hha.depth_to_hha`, e.g. ``{"invalid": "fill"}``).

Splits: ``train`` and ``test``; ``val`` reads ``test.txt`` when there is no ``val.txt`` (as DFormer / CMX /
DELIVER evaluate on the test split).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rgbx.data.datasets.base import (
    DATASETS,
    DecodeProblem,
    FileInfo,
    SegmentationDataset,
    StemIndex,
    probe_file,
)
from rgbx.data.description import DatasetDescription, ModalitySource, default_palette
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import ENCODINGS, get_modality, read_array

# -- shared by the public-release adapters ----------------------------------------------------------------------

_STRIP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")


def split_line_id(line: str) -> str | None:
    """Sample id of one split-file line: the stem of its first token (``RGB/12.jpg``, ``12.jpg`` and ``12`` all give
    ``12``); None for blank and ``#`` comment lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    token = line.split()[0].replace("\\", "/").rsplit("/", 1)[-1]
    stem, suffix = os.path.splitext(token)
    return stem if suffix.lower() in _STRIP_SUFFIXES else token


def read_split_file(path: Path) -> list[str]:
    """Sample ids of a split file (order kept, duplicates dropped)."""
    if not path.is_file():
        raise SplitNotFoundError(f"{path}: split file not found")
    ids = [i for i in map(split_line_id, path.read_text().splitlines()) if i is not None]
    if not ids:
        raise DataError(f"{path}: lists no samples")
    return list(dict.fromkeys(ids))


def find_folder(base: Path, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is a folder under ``base`` (exact name first, then ignoring case)."""
    for name in candidates:
        if (base / name).is_dir():
            return name
    if base.is_dir():
        present = {p.name.lower(): p.name for p in base.iterdir() if p.is_dir()}
        for name in candidates:
            if name.lower() in present:
                return present[name.lower()]
    return None


def to_rgb(raw: np.ndarray, scale: float) -> np.ndarray:
    """1-, 3- or 4-channel file values → 3-channel intensities (gray repeated, alpha dropped)."""
    x = raw[:3] if raw.shape[0] >= 3 else np.repeat(raw[:1], 3, axis=0)
    return x.astype(np.float32) * np.float32(scale)


def to_gray(raw: np.ndarray, name: str, tolerance: float = 8.0) -> np.ndarray:
    """1-, 2-, 3- or 4-channel file values of a gray image → (1, H, W) float; alpha dropped; colour images (the
    colour channels disagree by more than ``tolerance`` on over 1 % of pixels) are refused."""
    if raw.shape[0] <= 2:
        return raw[:1].astype(np.float32)
    rgb = raw[:3].astype(np.float32)
    spread = rgb.max(axis=0) - rgb.min(axis=0)
    if float((spread > tolerance).mean()) > 0.01:
        raise DecodeProblem(name, f"{name}: colour image where a gray one was expected (a colour-mapped "
                                  f"{name}?); rgbx reads gray images only")
    return rgb.mean(axis=0, keepdims=True)


class ReleaseDataset(SegmentationDataset):
    """Base of the adapters for public releases: folder indexes, split files, per-dataset file channel counts.

    Subclasses set :attr:`OPTIONS` (defaults of ``**options``, see :class:`SegmentationDataset`), :attr:`SPLITS`,
    :attr:`FILE_CHANNELS` (channel counts accepted on disk per modality; the first file of the folder decides for the
    whole dataset) and implement ``describe``; :meth:`list_ids` reads ``<split>.txt`` at the root and :meth:`files`
    looks each sample id up by stem in the source folders. Asking for a modality this copy of the dataset lacks
    names the reason (e.g. no HHA folder and nothing to compute HHA from).
    """

    SPLITS: tuple[str, ...] = ("train", "test")
    SPLIT_ALIASES: dict[str, str] = {"val": "test"}  # used only when the split's own file / folder is missing
    FILE_CHANNELS: dict[str, tuple[int, ...]] = {"rgb": (3, 4, 1)}
    LAYOUT = ""  # the expected tree in one line, for errors that mean "this is not that dataset's folder"

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str] | None = None, *args, **kwargs):
        self._indices: dict[tuple[str, tuple[str, ...]], StemIndex] = {}
        self._file_channels: dict[str, int] = {}
        self._unavailable: dict[str, str] = {}  # modality → why this copy of the dataset does not offer it
        try:
            super().__init__(root, split, modalities, *args, **kwargs)
        except DataError as e:
            missing = [m for m in (modalities or []) if m in self._unavailable]
            if missing and not e.problems:
                raise DataError(f"{root}: " + "; ".join(f"no {m!r}: {self._unavailable[m]}" for m in missing)) from None
            raise

    # -- helpers -----------------------------------------------------------------------------------------------
    def index(self, folder: str, suffixes: Sequence[str]) -> StemIndex:
        key = (folder, tuple(suffixes))
        if key not in self._indices:
            self._indices[key] = StemIndex(self.root / folder, suffixes)
        return self._indices[key]

    def source_index(self, src: ModalitySource) -> StemIndex:
        return self.index(src.folder, src.suffixes)

    def stem_indices(self) -> list[StemIndex]:
        return [self.source_index(src) for src in [*self.sources.values(), self.description.label]]

    def probe_first(self, folder: str, encoding: str) -> tuple[Path, FileInfo] | None:
        """Header of the first file (sorted by stem) of a folder, or None (empty / missing / unreadable)."""
        path = self.index(folder, ENCODINGS.get(encoding).suffixes).first()
        if path is None:
            return None
        try:
            return path, probe_file(path, encoding)
        except DataError:
            return None

    def note_channels(self, name: str, folder: str, encoding: str) -> None:
        """Record the channel count of ``name``'s files from the folder's first file."""
        found = self.probe_first(folder, encoding)
        if found is not None:
            self._file_channels[name] = found[1].channels

    def split_path(self, make_path) -> Path:
        """``make_path(split)`` for the requested split, or for its alias when that one exists and the split's
        own does not."""
        path = make_path(self.split)
        alias = self.SPLIT_ALIASES.get(self.split)
        if not path.exists() and alias is not None and make_path(alias).exists():
            return make_path(alias)
        return path

    def allowed_channels(self, name: str) -> tuple[int, ...]:
        """Channel counts accepted for ``name``'s files (empty = any)."""
        return self.FILE_CHANNELS.get(name, ())

    # -- SegmentationDataset ---------------------------------------------------------------------------------
    def expected_channels(self, name: str) -> int:
        return self._file_channels.get(name) or get_modality(name).channels

    def layout_problems(self) -> list[str]:
        problems = super().layout_problems()
        for name, channels in self._file_channels.items():
            allowed = self.allowed_channels(name)
            if name in self.sources and allowed and channels not in allowed:
                src = self.sources[name]
                first = self.source_index(src).first()
                problems.append(f"{first}: {channels}-channel {name!r} files; expected "
                                f"{' or '.join(map(str, allowed))} channel(s)")
        return problems

    def list_ids(self) -> list[str]:
        split_file = self.split_path(lambda s: self.root / f"{s}.txt")
        if not split_file.is_file():
            have = sorted(p.stem for p in self.root.glob("*.txt"))
            expected = f"; expected {self.LAYOUT}" if self.LAYOUT else ""
            raise SplitNotFoundError(f"{split_file}: split file not found (split files here: {', '.join(have) or 'none'}"
                            f"{expected})")
        return read_split_file(split_file)

    def files(self, sample_id: str) -> dict[str, Path | None]:
        out = {name: self.source_index(src).path(sample_id) for name, src in self.sources.items()}
        out["label"] = self.source_index(self.description.label).path(sample_id)
        return out


def _as_pair(value, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"data.options.{what}: expected two numbers, got {value!r}") from None
    return a, b


def _choice(options: dict, key: str, allowed: Sequence[str]) -> str:
    value = options[key]
    if value not in allowed:
        raise ConfigError(f"data.options.{key}={value!r}: expected one of {', '.join(map(repr, allowed))}")
    return value


# -- NYU Depth V2 and SUN RGB-D (same release pattern) -------------------------------------------------------------

NYU_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "books",
    "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person", "night stand",
    "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)
# NYU toolbox camera_params.m (colour camera), principal point converted from MATLAB's 1-based pixels to 0-based.
NYU_INTRINSICS = (518.857901, 519.469611, 325.582449 - 1.0, 253.736166 - 1.0)


class RGBDRelease(ReleaseDataset):
    """The DFormer / CMX RGB-D release pattern: ``RGB/``, ``Depth/`` and/or ``HHA/``, a label folder,
    ``<split>.txt`` at the root; labels 0 = void, k → k − 1."""

    NAME = ""
    RGB_FOLDERS = ("RGB", "rgb")
    DEPTH_FOLDERS = ("Depth", "depth")
    HHA_FOLDERS = ("HHA", "hha")
    LABEL_FOLDERS = ("Label", "labels", "label", "Labels")
    FILE_CHANNELS = {"rgb": (3, 4, 1), "depth": (1, 2, 3, 4), "hha": (3, 4)}
    OPTIONS = {"depth_format": "auto", "depth_scale": 0.001, "relative_depth_range": (0.5, 10.0),
               "hha_source": "auto", "hha_cache": None, "intrinsics": NYU_INTRINSICS, "hha_options": {}}

    # -- description ---------------------------------------------------------------------------------------------
    def describe(self) -> DatasetDescription:
        o = self.options
        self._depth_format = _choice(o, "depth_format", ("auto", "metric", "relative"))
        self._hha_source = _choice(o, "hha_source", ("auto", "folder", "compute"))
        self._relative_range = _as_pair(o["relative_depth_range"], "relative_depth_range")
        self._depth_scale = float(o["depth_scale"])
        root = self.root
        rgb_folder = find_folder(root, self.RGB_FOLDERS) or self.RGB_FOLDERS[0]
        label_folder = find_folder(root, self.LABEL_FOLDERS) or self.LABEL_FOLDERS[0]
        modalities = {"rgb": ModalitySource("rgb", rgb_folder, "png", "uint8", 1 / 255)}
        self.note_channels("rgb", rgb_folder, "png")

        depth_folder = find_folder(root, self.DEPTH_FOLDERS)
        self._depth_kind = None
        if depth_folder is None:
            self._unavailable["depth"] = f"no depth folder ({' or '.join(self.DEPTH_FOLDERS)}) in {root}"
        else:
            modalities["depth"] = self._depth_source(depth_folder)
        hha = self._hha_source_for(find_folder(root, self.HHA_FOLDERS), modalities.get("depth"))
        if hha is not None:
            modalities["hha"] = hha
        return DatasetDescription(
            root=root, name=self.NAME, classes=self.CLASSES, palette=tuple(default_palette(len(self.CLASSES))),
            ignore_index=255, modalities=modalities,
            label=ModalitySource("label", label_folder, "png", "uint8", 1.0),
            extra={"depth_encoding": self._depth_kind, "source": type(self).__module__},
        )

    def _depth_source(self, folder: str) -> ModalitySource:
        """Recognise the depth files' format from the folder's first file."""
        npy = self.probe_first(folder, "npy")
        found = npy if npy is not None else self.probe_first(folder, "png")
        if found is None:  # empty folder: report missing files per sample, as 16-bit PNGs
            self._depth_kind = "metric-16bit"
            return ModalitySource("depth", folder, "png", "uint16", self._depth_scale)
        path, info = found
        encoding = "npy" if npy is not None else "png"
        self._file_channels["depth"] = info.channels
        if info.dtype.startswith("float"):
            kind, scale = "metric-float", 1.0
        elif info.dtype in ("uint16", "int32") and info.channels == 1:
            kind, scale = "metric-16bit", self._depth_scale
        elif info.dtype == "uint8":
            kind, scale = "relative-8bit", 1.0
        else:
            raise DataError(f"{path}: unrecognised depth format ({info.channels} channel(s), {info.dtype}); "
                            f"expected float .npy in metres, a 16-bit PNG (× depth_scale = {self._depth_scale} m) "
                            f"or an 8-bit relative-depth PNG (DFormer release)")
        if kind == "relative-8bit" and self._depth_format == "metric":
            raise DataError(f"{path}: 8-bit depth holds relative depth (DFormer's release normalises each image "
                            f"to 0-255), not metres, and depth_format='metric' was asked for; use metric depth "
                            f"(16-bit PNG / float .npy) or depth_format='auto'")
        if kind != "relative-8bit" and self._depth_format == "relative":
            raise DataError(f"{path}: depth_format='relative' but the depth files are {info.dtype}, not 8-bit")
        self._depth_kind = kind
        return ModalitySource("depth", folder, encoding, info.dtype, scale)

    def _hha_source_for(self, hha_folder: str | None, depth: ModalitySource | None) -> ModalitySource | None:
        """Where ``hha`` comes from: the HHA folder, or computed from metric depth (optionally through a cache)."""
        self._hha_mode, self._hha_cache = None, None
        if hha_folder is not None and self._hha_source in ("auto", "folder"):
            self._hha_mode = "folder"
            self.note_channels("hha", hha_folder, "png")
            return ModalitySource("hha", hha_folder, "png", "uint8", 1 / 255)
        if self._hha_source == "folder":
            self._unavailable["hha"] = f"hha_source='folder' but there is no {self.HHA_FOLDERS[0]}/ folder"
            return None
        if depth is None or self._depth_kind == "relative-8bit":
            why = "no depth folder" if depth is None else "the depth files are 8-bit relative depth, not metric"
            self._unavailable["hha"] = f"no {self.HHA_FOLDERS[0]}/ folder, and HHA cannot be computed: {why}"
            return None
        if self.options["hha_cache"]:
            self._hha_mode = "cache"
            self._hha_cache = Path(self.options["hha_cache"]).expanduser().resolve()
            self._hha_cache.mkdir(parents=True, exist_ok=True)
            return ModalitySource("hha", str(self._hha_cache), "png", "uint8", 1 / 255)
        # Computed on the fly: the "hha" files are the depth files, decoded then encoded by rgbx.data.hha.
        self._hha_mode = "compute"
        if "depth" in self._file_channels:
            self._file_channels["hha"] = self._file_channels["depth"]
        return ModalitySource("hha", depth.folder, depth.encoding, depth.dtype, depth.scale)

    def allowed_channels(self, name: str) -> tuple[int, ...]:
        if name == "hha" and self._hha_mode == "compute":
            return self.FILE_CHANNELS["depth"]  # the "hha" files are the depth files
        return super().allowed_channels(name)

    # -- files ----------------------------------------------------------------------------------------------------
    def files(self, sample_id: str) -> dict[str, Path | None]:
        out = super().files(sample_id)
        if "hha" in self.sources and self._hha_mode == "cache":
            depth = self.source_index(self.description.modalities["depth"]).path(sample_id)
            out["hha"] = None if depth is None else self._cached_hha(depth)
        return out

    def _cached_hha(self, depth_path: Path) -> Path:
        from rgbx.data.hha import hha_cache_file

        src = self.description.modalities["depth"]

        def read_depth(path: Path) -> np.ndarray:
            return self.decode_depth(read_array(path, src.encoding), src)[0]

        return hha_cache_file(depth_path, self._hha_cache, self.camera_intrinsics, read_depth=read_depth,
                              **dict(self.options["hha_options"] or {}))

    # -- decoding -------------------------------------------------------------------------------------------------
    @property
    def DECODE_ON_CHECK(self) -> bool:
        """A full check (``rgbx data check``) decodes the files when the depth is 8-bit relative depth: only
        decoding (:func:`to_gray`) tells a colour-mapped depth image from a gray one. Not with metric depth, where
        decoding ``hha`` would compute it for every sample."""
        return getattr(self, "_depth_kind", None) == "relative-8bit"

    def camera_intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) used to compute HHA for an image of this size."""
        k = self.options["intrinsics"]
        try:
            fx, fy, cx, cy = (float(v) for v in k)
        except (TypeError, ValueError):
            raise ConfigError(f"data.options.intrinsics: expected (fx, fy, cx, cy), got {k!r}") from None
        return fx, fy, cx, cy

    def decode_depth(self, raw: np.ndarray, src: ModalitySource) -> np.ndarray:
        """Raw depth file values → (1, H, W) float32 (metres, or approximate metres for relative 8-bit depth)."""
        if self._depth_kind == "relative-8bit":
            near, far = self._relative_range
            return near + to_gray(raw, "depth") / np.float32(255) * np.float32(far - near)
        x = raw[:1].astype(np.float32) * np.float32(src.scale)
        x[~np.isfinite(x) | (x < 0)] = 0.0
        return x

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        src = self.sources[name]
        if name == "rgb":
            return to_rgb(raw, src.scale)
        if name == "depth":
            return self.decode_depth(raw, src)
        if name == "hha":
            if self._hha_mode != "compute":
                return to_rgb(raw, src.scale)
            from rgbx.data.hha import depth_to_hha

            depth = self.decode_depth(raw, src)[0]
            hha = depth_to_hha(depth, self.camera_intrinsics(*depth.shape), **dict(self.options["hha_options"] or {}))
            return hha.astype(np.float32) / np.float32(255)
        return super().decode_modality(name, raw)

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.astype(np.int64)
        return np.where((raw == 0) | (raw == 255), 255, raw - 1)


@DATASETS.register("nyudepthv2")
class NYUDepthV2(RGBDRelease):
    """NYU Depth V2, 40 classes, in the DFormer / CMX / SA-Gate layout (see the module docstring)."""

    NAME = "nyudepthv2"
    LAYOUT = ("the NYU Depth V2 release of DFormer / CMX: RGB/, Depth/ and/or HHA/, Label/, train.txt and test.txt "
              "at the root")
    CLASSES = NYU_CLASSES
    SPLITS = ("train", "test")


__all__ = ["DecodeProblem", "NYUDepthV2", "NYU_CLASSES", "NYU_INTRINSICS", "RGBDRelease", "ReleaseDataset",
           "StemIndex", "find_folder", "read_split_file", "split_line_id", "to_gray", "to_rgb"]
