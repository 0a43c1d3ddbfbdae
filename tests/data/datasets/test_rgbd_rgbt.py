"""NYU Depth V2, SUN RGB-D, MFNet and PST900 read from tiny fake trees in their releases' own layouts.

Layout facts these trees encode (sources named in each adapter's docstring):

- NYU (DFormer release): RGB/<n>.jpg, Depth/<n>.png (plt.imsave Greys_r → 8-bit RGBA, per-image relative depth),
  Label/<n>.png (0 = void, 1..40), train.txt / test.txt with lines "RGB/<n>.jpg".
- NYU (SA-Gate / CMX): HHA/<n>.jpg (3-channel), Depth/<n>.npy (float32 metres) in SA-Gate, split lines
  "RGB/<n>.jpg<TAB>Label/<n>.png" (SA-Gate) or bare "<n>" (CMX, DELIVER).
- SUN RGB-D (DFormer): same as NYU but lowercase labels/, 37 classes; original 16-bit depth is mm with a 3-bit
  circular shift.
- MFNet original: images/<name>.png 4-channel (R, G, B, thermal), labels/<name>.png 0..8 with 0 = unlabeled counted,
  train.txt / val.txt / test.txt with bare names ending in D (day) or N (night).
- MFNet as DELIVER converts it: rgb/<name>.jpg, ther/<name>.jpg, labels/<name>.png, train.txt / test.txt.
- PST900: {train,test}/{rgb,thermal,depth,labels}/<name>.png, no split files; depth uint16 / 2560 = metres;
  labels 0..4 with background counted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rgbx.data.datasets.mfnet  # noqa: F401  (registers "mfnet")
import rgbx.data.datasets.nyu  # noqa: F401  (registers "nyudepthv2")
import rgbx.data.datasets.pst900  # noqa: F401  (registers "pst900")
import rgbx.data.datasets.sunrgbd  # noqa: F401  (registers "sunrgbd")
from rgbx.data import build_dataset, check_dataset
from rgbx.data.datasets.mfnet import MFNet
from rgbx.data.datasets.nyu import NYUDepthV2, split_line_id
from rgbx.data.datasets.pst900 import PST900
from rgbx.data.datasets.sunrgbd import SUNRGBD
from rgbx.errors import ConfigError, DataError, SplitNotFoundError

H, W = 12, 16
RNG = np.random.default_rng(0)


def save(path: Path, arr: np.ndarray, quality: int | None = None) -> Path:
    """Write an image the way the releases do: (H, W) uint8 → L, uint16 → I;16, (H, W, 3|4) → RGB|RGBA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, arr)
        return path
    img = Image.fromarray(arr)
    if path.suffix == ".jpg":
        img.save(path, quality=quality or 95)
    else:
        img.save(path)
    return path


def rgb_image() -> np.ndarray:
    return RNG.integers(0, 255, (H, W, 3)).astype(np.uint8)


def label_image(values) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    for i, v in enumerate(values):
        lab[i] = v
    return lab


# -- NYU Depth V2 -------------------------------------------------------------------------------------------------

def make_nyu_dformer(root: Path) -> Path:
    """DFormer's NYUDepthv2: jpg colour, 8-bit RGBA relative depth, labels with 0 = void, 'RGB/<n>.jpg' lines."""
    for n in ("0", "1", "2"):
        save(root / "RGB" / f"{n}.jpg", rgb_image())
        gray = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))  # near (0) → far (255)
        save(root / "Depth" / f"{n}.png", np.dstack([gray, gray, gray, np.full_like(gray, 255)]))  # plt.imsave: RGBA
        save(root / "Label" / f"{n}.png", label_image([0, 1, 40, 5]))
    (root / "train.txt").write_text("RGB/0.jpg\nRGB/1.jpg\n")
    (root / "test.txt").write_text("RGB/2.jpg\n")
    return root


def make_nyu_sagate(root: Path, depth="npy", hha=True, lines="sagate") -> Path:
    """SA-Gate / CMX NYUDepthv2: HHA/<n>.jpg, Depth as float .npy metres (SA-Gate) or 16-bit mm PNG (converted)."""
    for n in ("10", "11", "12"):
        save(root / "RGB" / f"{n}.jpg", rgb_image())
        if hha:
            save(root / "HHA" / f"{n}.jpg", rgb_image())
        z = np.full((H, W), 2.5, np.float32)
        z[:, W // 2:] = 4.0
        if depth == "npy":
            save(root / "Depth" / f"{n}.npy", z)
        else:
            save(root / "Depth" / f"{n}.png", (z * 1000).astype(np.uint16))
        save(root / "Label" / f"{n}.png", label_image([0, 1, 40, 255]))
    fmt = {"sagate": "RGB/{0}.jpg\tLabel/{0}.png", "cmx": "{0}"}[lines]
    (root / "train.txt").write_text("\n".join(fmt.format(n) for n in ("10", "11")) + "\n")
    (root / "test.txt").write_text(fmt.format("12") + "\n")
    return root


def test_split_lines_of_every_release_give_the_same_id():
    assert split_line_id("RGB/12.jpg") == "12"  # DFormer
    assert split_line_id("RGB/12.jpg\tLabel/12.png") == "12"  # SA-Gate
    assert split_line_id("12") == "12"  # CMX, DELIVER, MFNet
    assert split_line_id("01606D") == "01606D"
    assert split_line_id("  # comment") is None and split_line_id("") is None


def test_nyu_dformer_release(tmp_path):
    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    ds = NYUDepthV2(root, "train")
    assert ds.ids == ["0", "1"]
    d = ds.description
    assert d.num_classes == 40 and d.classes[0] == "wall" and d.classes[-1] == "otherprop"
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    assert d.ignore_index == 255 and d.palette[1] == (128, 0, 0)
    # 8-bit relative depth is offered as approximate metres; no HHA can be computed from it.
    assert list(d.modalities) == ["rgb", "depth"] and d.extra["depth_encoding"] == "relative-8bit"
    s = ds.load(0)
    assert s["inputs"]["rgb"].shape == (3, H, W) and 0 <= float(s["inputs"]["rgb"].min()) <= 1
    depth = s["inputs"]["depth"]
    assert depth.shape == (1, H, W)  # RGBA file → 1 channel
    assert depth[0, 0, 0].item() == pytest.approx(0.5) and depth[0, 0, -1].item() == pytest.approx(10.0)
    lab = s["label"]
    assert lab[0].unique().tolist() == [255]  # raw 0 = void → ignore
    assert lab[1].unique().tolist() == [0]  # raw 1 (wall) → 0
    assert lab[2].unique().tolist() == [39]  # raw 40 (otherprop) → 39
    assert NYUDepthV2(root, "val").ids == ["2"]  # no val.txt: val reads test.txt
    assert check_dataset(root, dataset="nyudepthv2") == {"train": 2, "test": 1}


def test_nyu_relative_depth_refusals(tmp_path):
    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    with pytest.raises(DataError, match="relative"):
        NYUDepthV2(root, "train", modalities=["rgb", "hha"])
    with pytest.raises(DataError, match="not metres"):
        NYUDepthV2(root, "train", depth_format="metric")
    with pytest.raises(ConfigError, match="unknown option"):
        NYUDepthV2(root, "train", depth_fmt="metric")


def test_nyu_colour_mapped_depth_is_refused_with_its_path(tmp_path):
    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    save(root / "Depth" / "1.png", np.dstack([rgb_image(), np.full((H, W), 255, np.uint8)]))
    ds = NYUDepthV2(root, "train")
    with pytest.raises(DataError, match=r"1\.png.*colour"):
        ds.load(1)
    # rgbx data check (a full check) names it up front, as loading would
    assert ds.find_problems() == []  # the header check does not decode (training's default check stays cheap)
    problems = ds.find_problems(full=True)
    assert len(problems) == 1 and problems[0].startswith(f"{root / 'Depth' / '1.png'}: depth: colour image")
    with pytest.raises(DataError, match=r"Depth/1\.png: depth: colour image where a gray one was expected"):
        check_dataset(root, dataset="nyudepthv2")


def test_nyu_sagate_release_hha_folder_and_metric_depth(tmp_path):
    root = make_nyu_sagate(tmp_path / "NYUDepthv2")
    ds = NYUDepthV2(root, "train")
    assert ds.ids == ["10", "11"]
    assert list(ds.description.modalities) == ["rgb", "depth", "hha"]
    assert ds.description.modalities["hha"].folder == "HHA"
    s = ds.load(1)
    assert sorted(torch.unique(s["inputs"]["depth"]).tolist()) == [2.5, 4.0]  # metres from float32 .npy
    assert s["inputs"]["hha"].shape == (3, H, W) and float(s["inputs"]["hha"].max()) <= 1.0
    assert s["label"][3].unique().tolist() == [255]  # a raw 255 is void too (DELIVER maps 255 → 0 → ignore)
    assert check_dataset(root, dataset="nyudepthv2") == {"train": 2, "test": 1}


def test_nyu_16bit_depth_and_computed_hha(tmp_path):
    root = make_nyu_sagate(tmp_path / "NYUDepthv2", depth="png", hha=False, lines="cmx")
    ds = NYUDepthV2(root, "train")
    assert ds.description.extra["depth_encoding"] == "metric-16bit"
    s = ds.load(0)
    assert sorted(round(v, 4) for v in torch.unique(s["inputs"]["depth"]).tolist()) == [2.5, 4.0]  # mm → m
    hha = s["inputs"]["hha"]  # computed from depth with NYU's intrinsics
    assert hha.shape == (3, H, W)
    assert hha[0, 0, 0].item() == pytest.approx(round(310 / 2.5) / 255)  # disparity channel = 310 / z
    assert hha[0, 0, -1].item() == pytest.approx(round(310 / 4.0) / 255)
    cache = tmp_path / "hha_cache"
    cached = NYUDepthV2(root, "train", hha_cache=str(cache), modalities=["rgb", "hha"])
    assert sorted(p.name for p in cache.iterdir()) == ["10.png", "11.png"]  # written while checking the split
    assert torch.allclose(cached.load(0)["inputs"]["hha"], hha)


def test_nyu_broken_files_are_named(tmp_path):
    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    (root / "Depth" / "1.png").unlink()
    save(root / "Label" / "0.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset="nyudepthv2")
    msg = str(e.value)
    assert str(root / "Depth" / "1") in msg and "missing depth" in msg
    assert str(root / "Label" / "0.png") in msg and "differs" in msg
    (root / "train.txt").unlink()
    with pytest.raises(DataError, match=r"train\.txt: split file not found"):
        build_dataset("nyudepthv2", root, "train")


def test_two_files_for_one_sample_are_named(tmp_path):
    """A stray RGB/0.png beside RGB/0.jpg (the split file names RGB/0.jpg): the .png was read without a word."""
    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    save(root / "RGB" / "0.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset="nyudepthv2")
    assert e.value.problems == [f"{root / 'RGB'}: 2 files for sample '0' (0.png, 0.jpg); 0.png would be read: keep "
                                f"only the one that belongs to the sample"]


def test_nyu_jpeg_labels_are_named(tmp_path):
    """Labels saved as JPEG: the smeared ids stayed inside 1..40 and passed the check; now the format is named."""
    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    for png in (root / "Label").glob("*.png"):
        save(png.with_suffix(".jpg"), label_image([5, 12, 20]), quality=75)
        png.unlink()
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset="nyudepthv2")
    assert (f"{root / 'Label' / '0.jpg'}: a .jpg label image: lossy compression changes the class ids along every "
            f"boundary; store labels losslessly (PNG)") in e.value.problems


# -- SUN RGB-D ----------------------------------------------------------------------------------------------------

def test_sunrgbd_lowercase_labels_37_classes_and_shifted_depth(tmp_path):
    root = tmp_path / "SUNRGBD"
    mm = np.full((H, W), 1234, np.uint16)
    for n in ("img_a", "img_b"):
        save(root / "RGB" / f"{n}.jpg", rgb_image())
        save(root / "Depth" / f"{n}.png", ((mm.astype(np.uint32) << 3) & 0xFFFF).astype(np.uint16))  # toolbox shift
        save(root / "labels" / f"{n}.png", label_image([0, 1, 37]))
    (root / "train.txt").write_text("RGB/img_a.jpg\n")
    (root / "test.txt").write_text("RGB/img_b.jpg\n")
    ds = SUNRGBD(root, "train")
    d = ds.description
    assert d.num_classes == 37 and d.classes[23] == "fridge" and d.classes[-1] == "bag"
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    assert d.label.folder == "labels"
    s = ds.load(0)
    assert s["label"][0].unique().tolist() == [255] and s["label"][2].unique().tolist() == [36]
    assert s["inputs"]["depth"].unique().tolist() == [pytest.approx(1.234)]  # shift undone, mm → m
    assert SUNRGBD(root, "train", depth_bitshift=False).load(0)["inputs"]["depth"].max() > 9.0
    assert s["inputs"]["hha"].shape == (3, H, W)  # computed with guessed intrinsics
    assert check_dataset(root, dataset="sunrgbd") == {"train": 1, "test": 1}


def test_sunrgbd_shifted_depth_with_pixels_beyond_8m_is_still_unshifted(tmp_path):
    """The toolbox rotates millimetres left by 3 bits, so a pixel at 8.192 m or more has low bits set: one such pixel
    made "auto" read the whole image as plain millimetres, 8× too far (2 m read as 16 m). The majority decides now,
    and the un-shifted depth is clipped at 8 m as read3dPoints.m does; plain millimetres stay plain."""
    root = tmp_path / "SUNRGBD"
    mm = np.full((H, W), 2000, np.uint32)
    mm[0, :3] = 9000  # beyond the 8.19 m the shifted format keeps in its high bits
    shifted = (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16)
    plain = np.random.default_rng(0).integers(500, 9500, (H, W)).astype(np.uint16)
    for n, depth in (("shifted", shifted), ("plain", plain)):
        save(root / "RGB" / f"{n}.jpg", rgb_image())
        save(root / "Depth" / f"{n}.png", depth)
        save(root / "labels" / f"{n}.png", label_image([1, 2, 3]))
    (root / "train.txt").write_text("RGB/shifted.jpg\nRGB/plain.jpg\n")
    (root / "test.txt").write_text("RGB/plain.jpg\n")
    ds = SUNRGBD(root, "train", modalities=["rgb", "depth"])
    depth = ds.load(0)["inputs"]["depth"][0]
    assert depth[1:].unique().tolist() == [pytest.approx(2.0)]
    assert depth[0, :3].tolist() == [pytest.approx(8.0)] * 3  # the toolbox's clip
    torch.testing.assert_close(ds.load(1)["inputs"]["depth"][0], torch.from_numpy(plain.astype(np.float32) / 1000))


def test_sunrgbd_pad_to_pads_every_file_as_dformerv2_evaluates(tmp_path):
    """DFormerv2's --pad_SUNRGBD: image, depth image and label padded at the bottom and right with 0 (black, the
    depth file's 0, void) to a fixed size before anything else."""
    root = tmp_path / "SUNRGBD"
    relative = np.full((H, W), 200, np.uint8)  # the DFormer release's 8-bit relative depth
    save(root / "RGB" / "a.jpg", rgb_image())
    save(root / "Depth" / "a.png", relative)
    save(root / "labels" / "a.png", label_image([1, 2, 3]))
    (root / "train.txt").write_text("RGB/a.jpg\n")
    (root / "test.txt").write_text("RGB/a.jpg\n")
    plain = SUNRGBD(root, "test", ["rgb", "depth"]).load(0)
    padded = SUNRGBD(root, "test", ["rgb", "depth"], pad_to=[H + 3, W + 5]).load(0)
    rgb, depth, label = padded["inputs"]["rgb"], padded["inputs"]["depth"], padded["label"]
    assert rgb.shape == (3, H + 3, W + 5) and depth.shape == (1, H + 3, W + 5) and label.shape == (H + 3, W + 5)
    assert torch.equal(rgb[:, :H, :W], plain["inputs"]["rgb"]) and torch.equal(label[:H, :W], plain["label"])
    assert rgb[:, H:].abs().max() == 0 and rgb[:, :, W:].abs().max() == 0
    assert (label[H:] == 255).all() and (label[:, W:] == 255).all()
    near = SUNRGBD.OPTIONS["relative_depth_range"][0]  # the depth file's 0 in metres (DFormer feeds its raw 0)
    assert torch.allclose(depth[:, H:], torch.tensor(near)) and torch.allclose(depth[:, :, W:], torch.tensor(near))
    assert padded["meta"]["size"] == (H + 3, W + 5)
    # HHA computed from metric depth at the camera's own size (its intrinsics), then padded with 0 like the rest
    save(root / "Depth" / "a.png", np.full((H, W), 2500, np.uint16))
    plain = SUNRGBD(root, "test", ["hha"]).load(0)["inputs"]["hha"]
    hha = SUNRGBD(root, "test", ["hha"], pad_to=[H + 3, W + 5]).load(0)["inputs"]["hha"]
    assert torch.equal(hha[:, :H, :W], plain) and hha[:, H:].abs().max() == 0 and hha[:, :, W:].abs().max() == 0
    with pytest.raises(DataError, match=r"pad_to=11x16 is smaller than the 12×16 image"):
        SUNRGBD(root, "test", ["rgb", "depth"], pad_to=[H - 1, W]).load(0)
    with pytest.raises(ConfigError, match=r"data.options.pad_to=\[0, 5\]: expected \[H, W\]"):
        SUNRGBD(root, "test", pad_to=[0, 5])


def test_sunrgbd_colour_mapped_depth_is_named_by_the_full_check(tmp_path):
    root = tmp_path / "SUNRGBD"
    for n in ("a", "b"):
        save(root / "RGB" / f"{n}.jpg", rgb_image())
        gray = np.full((H, W), 200, np.uint8)  # 8-bit relative depth, RGBA as plt.imsave writes it
        save(root / "Depth" / f"{n}.png", np.dstack([gray, gray, gray, np.full_like(gray, 255)]))
        save(root / "labels" / f"{n}.png", label_image([1, 2, 3]))
    save(root / "Depth" / "b.png", np.dstack([rgb_image(), np.full((H, W), 255, np.uint8)]))  # colour-mapped
    (root / "train.txt").write_text("RGB/a.jpg\n")
    (root / "test.txt").write_text("RGB/b.jpg\n")
    assert SUNRGBD(root, "train", check="full").load(0)["inputs"]["depth"].shape == (1, H, W)
    with pytest.raises(DataError, match=r"Depth/b\.png: depth: colour image where a gray one was expected"):
        check_dataset(root, dataset="sunrgbd")


# -- MFNet --------------------------------------------------------------------------------------------------------

def make_mfnet_original(root: Path) -> Path:
    names = {"train": ["00001D", "00002N"], "val": ["00003D"], "test": ["00004N"]}
    for split, members in names.items():
        for n in members:
            rgbt = np.dstack([rgb_image(), np.full((H, W), 200, np.uint8)])  # channel 3 = thermal
            save(root / "images" / f"{n}.png", rgbt)
            save(root / "labels" / f"{n}.png", label_image([0, 1, 8]))
        (root / f"{split}.txt").write_text("\n".join(members) + "\n")
    return root


def test_mfnet_original_4_channel_layout(tmp_path, monkeypatch):
    root = make_mfnet_original(tmp_path / "MFNet")
    ds = MFNet(root, "train")
    assert ds.layout == "rgbt" and ds.ids == ["00001D", "00002N"]
    d = ds.description
    assert d.classes[0] == "unlabeled" and d.num_classes == 9 and d.palette[1] == (64, 0, 128)
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(1)
    assert s["inputs"]["rgb"].shape == (3, H, W)
    assert s["inputs"]["thermal"].shape == (1, H, W)
    assert s["inputs"]["thermal"].unique().tolist() == [pytest.approx(200 / 255)]
    assert s["label"][0].unique().tolist() == [0]  # unlabeled stays class 0 (counted in mIoU)
    assert s["label"][2].unique().tolist() == [8]
    assert s["meta"]["attributes"] == {"condition": "night"}
    assert ds.attributes("00001D") == {"condition": "day"}
    assert MFNet(root, "val").ids == ["00003D"]  # the original has a real val split
    assert check_dataset(root, dataset="mfnet") == {"train": 2, "val": 1, "test": 1}
    (root / "val.txt").write_text("00003D\n00009D\n")  # checked too: training evaluates on it by default
    with pytest.raises(DataError, match="00009D"):
        check_dataset(root, dataset="mfnet")
    (root / "val.txt").unlink()  # a copy without val.txt: val reads test.txt
    checked = []
    find_problems = MFNet.find_problems
    monkeypatch.setattr(MFNet, "find_problems", lambda self, **kw: checked.append(self.split) or find_problems(self, **kw))
    assert check_dataset(root, dataset="mfnet") == {"train": 2, "val": 1, "test": 1}
    assert checked == ["train", "val"]  # test.txt's files once, not again as test


def test_mfnet_deliver_layout_and_broken_label(tmp_path):
    root = tmp_path / "MFNet"
    for n in ("00010D", "00011N", "00012D"):
        save(root / "rgb" / f"{n}.jpg", rgb_image())
        save(root / "ther" / f"{n}.jpg", np.full((H, W), 100, np.uint8))  # gray JPEG
        save(root / "labels" / f"{n}.png", label_image([0, 3]))
    (root / "train.txt").write_text("00010D\n00011N\n")
    (root / "test.txt").write_text("00012D\n")
    ds = build_dataset("mfnet", root, "train")
    assert ds.layout == "separate" and list(ds.description.modalities) == ["rgb", "thermal"]
    s = ds.load(0)
    assert s["inputs"]["thermal"].shape == (1, H, W)
    assert abs(float(s["inputs"]["thermal"].mean()) - 100 / 255) < 0.02  # JPEG
    assert MFNet(root, "val").ids == ["00012D"]  # no val.txt: val reads test.txt
    assert check_dataset(root, dataset="mfnet") == {"train": 2, "val": 1, "test": 1}
    save(root / "labels" / "00011N.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=r"00011N\.jpg: size 12x16 \(HxW\) differs from \S+/labels/00011N\.png"):
        MFNet(root, "train")
    save(root / "labels" / "00011N.png", np.full((H, W), 9, np.uint8))
    with pytest.raises(DataError, match=r"00011N\.png.*out of range"):
        check_dataset(root, dataset="mfnet")
    save(root / "labels" / "00011N.png", label_image([0, 3]))
    for n in ("00010D", "00011N"):  # gray JPEGs written as RGB, and one colour-mapped thermal image
        save(root / "ther" / f"{n}.jpg", np.dstack([np.full((H, W), 100, np.uint8)] * 3))
    save(root / "ther" / "00012D.jpg", rgb_image())
    MFNet(root, "test")  # headers only: not decoded
    with pytest.raises(DataError, match=r"00012D\.jpg: thermal: colour image where a gray one was expected"):
        check_dataset(root, dataset="mfnet")


# -- PST900 -------------------------------------------------------------------------------------------------------

def make_pst900(root: Path) -> Path:
    names = {"train": ["31_bag1a_rect_rgb_frame0000000007", "31_bag1a_rect_rgb_frame0000000009"],
             "test": ["32_bag2_rect_rgb_frame0000000001"]}
    for split, members in names.items():
        for n in members:
            save(root / split / "rgb" / f"{n}.png", rgb_image())
            save(root / split / "thermal" / f"{n}.png", np.full((H, W), 128, np.uint8))
            save(root / split / "thermal_raw" / f"{n}.png", np.full((H, W), 30000, np.uint16))
            save(root / split / "depth" / f"{n}.png", np.full((H, W), 2560, np.uint16))
            save(root / split / "labels" / f"{n}.png", label_image([0, 1, 4]))
    return root


def test_pst900_layout_units_and_labels(tmp_path):
    root = make_pst900(tmp_path / "PST900_RGBT_Dataset")
    ds = PST900(root, "train")
    assert ds.ids == ["31_bag1a_rect_rgb_frame0000000007", "31_bag1a_rect_rgb_frame0000000009"]
    d = ds.description
    assert d.classes == ("background", "fire_extinguisher", "backpack", "hand_drill", "survivor")
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    assert list(d.modalities) == ["rgb", "thermal", "depth"]
    s = ds.load(0)
    assert s["inputs"]["depth"].unique().tolist() == [pytest.approx(1.0)]  # 2560 / 2560 → 1 m
    assert s["inputs"]["thermal"].unique().tolist() == [pytest.approx(128 / 255)]
    assert s["label"][0].unique().tolist() == [0]  # background counts (no ignore mapping)
    assert s["label"][2].unique().tolist() == [4]
    assert PST900(root, "val").ids == ["32_bag2_rect_rgb_frame0000000001"]  # no val/: val reads test/
    assert check_dataset(root, dataset="pst900") == {"train": 2, "test": 1}
    shutil.rmtree(root / "test")  # a partial download: the check skips the missing split (was: a problem)
    assert check_dataset(root, dataset="pst900") == {"train": 2}
    with pytest.raises(SplitNotFoundError, match=r"test: split folder not found \(PST900 splits here: train\)"):
        PST900(root, "test")


def test_pst900_missing_and_wrong_files_are_named(tmp_path):
    root = make_pst900(tmp_path / "PST900_RGBT_Dataset")
    missing = root / "train" / "thermal" / "31_bag1a_rect_rgb_frame0000000009.png"
    missing.unlink()
    save(root / "test" / "depth" / "32_bag2_rect_rgb_frame0000000001.png", np.zeros((H, W), np.uint8))  # 8-bit
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset="pst900")
    msg = str(e.value)
    assert "31_bag1a_rect_rgb_frame0000000009" in msg and "missing thermal" in msg
    assert "32_bag2_rect_rgb_frame0000000001.png: dtype uint8, expected uint16" in msg


def test_pst900_colour_mapped_thermal_is_named_by_the_full_check(tmp_path):
    root = make_pst900(tmp_path / "PST900_RGBT_Dataset")
    for path in (root / "train" / "thermal").glob("*.png"):  # gray thermal written as RGB: accepted
        save(path, np.dstack([np.full((H, W), 128, np.uint8)] * 3))
    assert PST900(root, "train", check="full").load(0)["inputs"]["thermal"].shape == (1, H, W)
    thermal = save(root / "train" / "thermal" / "31_bag1a_rect_rgb_frame0000000009.png", rgb_image())
    PST900(root, "train")  # headers only: not decoded
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset="pst900")
    assert e.value.problems == [f"{thermal}: thermal: colour image where a gray one was expected (a colour-mapped "
                                f"thermal?); rgbx reads gray images only"]
