"""The driving-benchmark adapters (DeLiVER, MCubeS, KITTI-360, MUSES, EventScape) on tiny fake trees in each dataset's
official layout. The layout facts each tree encodes are noted where it is built (sources: the module docstrings)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rgbx.data.datasets.deliver  # noqa: F401  (registers "deliver")
import rgbx.data.datasets.eventscape  # noqa: F401
import rgbx.data.datasets.kitti360  # noqa: F401
import rgbx.data.datasets.mcubes  # noqa: F401
import rgbx.data.datasets.muses  # noqa: F401
from rgbx.data import DATASETS, check_dataset
from rgbx.errors import ConfigError, DataError

H, W = 12, 16


def save_png(path: Path, arr: np.ndarray) -> Path:
    """(H, W) or (H, W, C) uint8/uint16 array → PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def save_npy(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return path


def rgb_image(seed: int, h: int = H, w: int = W, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def problems(root, dataset, **kw) -> str:
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset=dataset, **kw)
    return str(e.value)


# ---------------------------------------------------------------------------------------------------------------------
# DeLiVER: <modality>/<condition>/<split>/<sequence>/<frame>_<tag>_front.png; hha/ files are named *_depth_front.png;
# labels are RGBA with the CARLA tag in channel 0 (0 = unlabelled); cases are part of the sequence folder name;
# eventlowres event images are smaller than the RGB.
DELIVER_SAMPLES = [  # split, condition, sequence, frame
    ("train", "cloud", "MAP_1_point2", "000001"),
    ("train", "cloud", "MAP_1_point2", "000002"),
    ("train", "night", "MAP_3_point7_motionblur", "000005"),
    ("val", "fog", "MAP_4_point1_eventlowres", "000010"),
    ("test", "sun", "MAP_10_point102", "045050"),
]


def carla_depth_rgb(metres: np.ndarray) -> np.ndarray:
    v = np.round(metres / 1000.0 * (256**3 - 1)).astype(np.int64)
    return np.stack([v % 256, (v // 256) % 256, v // 65536], axis=-1).astype(np.uint8)


def make_deliver(root: Path) -> Path:
    for i, (split, cond, seq, frame) in enumerate(DELIVER_SAMPLES):
        p = lambda folder, tag: root / folder / cond / split / seq / f"{frame}_{tag}_front.png"  # noqa: B023, E731
        save_png(p("img", "rgb"), rgb_image(i, channels=4))  # CARLA writes RGBA
        save_png(p("hha", "depth"), rgb_image(10 + i))
        depth = np.full((H, W), 12.5)
        depth[:, W // 2:] = 250.0
        save_png(p("depth", "depth"), carla_depth_rgb(depth))
        ev_h, ev_w = (H // 2, W // 2) if "eventlowres" in seq else (H, W)
        ev = np.zeros((ev_h, ev_w, 3), np.uint8)
        ev[1, 1] = (0, 0, 255)  # blue: positive
        ev[2, 3] = (255, 0, 0)  # red: negative
        ev[3, 3] = (255, 255, 255)  # neither
        save_png(p("event", "event"), ev)
        lidar = np.zeros((H, W), np.uint8)
        lidar[5, 5] = 40
        save_png(p("lidar", "lidar"), lidar)
        sem = np.zeros((H, W, 4), np.uint8)
        sem[..., 3] = 255
        sem[:, :, 0] = 7  # Road (tag 7 → class 6)
        sem[0, :, 0] = 0  # unlabelled → ignore
        sem[1, :, 0] = 1  # Building → 0
        sem[2, :, 0] = 25  # Truck → 24
        sem[3, :, 0] = 255  # → ignore
        save_png(p("semantic", "semantic"), sem)
    return root


def test_deliver_ids_modalities_and_label_mapping(tmp_path):
    root = make_deliver(tmp_path / "DELIVER")
    ds = DATASETS.get("deliver")(root, "train")
    assert ds.ids == ["cloud/MAP_1_point2/000001", "cloud/MAP_1_point2/000002", "night/MAP_3_point7_motionblur/000005"]
    assert set(ds.description.modalities) == {"rgb", "depth", "hha", "event", "lidar"}
    assert ds.description.num_classes == 25 and ds.description.classes[6] == "Road"
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(0)
    shapes = {k: tuple(v.shape) for k, v in s["inputs"].items()}
    assert shapes == {"rgb": (3, H, W), "depth": (1, H, W), "hha": (3, H, W), "event": (2, H, W), "lidar": (1, H, W)}
    lab = s["label"]
    assert lab[0].unique().tolist() == [255] and lab[1].unique().tolist() == [0]
    assert lab[2].unique().tolist() == [24] and lab[3].unique().tolist() == [255] and lab[5, 0] == 6
    # CARLA raw depth → metres (24-bit quantisation: 1000 m / 2^24 ≈ 0.06 mm)
    assert torch.allclose(s["inputs"]["depth"][0, :, 0], torch.full((H,), 12.5), atol=1e-3)
    assert torch.allclose(s["inputs"]["depth"][0, :, -1], torch.full((H,), 250.0), atol=1e-3)
    ev = s["inputs"]["event"]
    assert ev[0, 1, 1] == 1 and ev[1, 1, 1] == 0 and ev[1, 2, 3] == 1 and ev[0, 2, 3] == 0
    assert ev.sum() == 2  # the white pixel is not an event
    assert s["inputs"]["lidar"][0, 5, 5] == 40 and s["inputs"]["lidar"].count_nonzero() == 1  # grey levels by default
    assert s["meta"]["attributes"] == {"condition": "cloud", "case": "normal"}


def test_deliver_conditions_cases_and_low_resolution_events(tmp_path):
    root = make_deliver(tmp_path / "DELIVER")
    cls = DATASETS.get("deliver")
    night = cls(root, "train", conditions=["night"])
    assert night.ids == ["night/MAP_3_point7_motionblur/000005"]
    assert night.attributes(night.ids[0]) == {"condition": "night", "case": "motionblur"}
    assert len(cls(root, "train", cases=["normal"])) == 2
    assert len(cls(root, "train", cases="motionblur")) == 1
    with pytest.raises(DataError, match="no \\*_rgb_front.png"):
        cls(root, "train", conditions=["fog"])
    with pytest.raises(ConfigError, match="cases"):
        cls(root, "train", cases=["blurry"])
    with pytest.raises(ConfigError, match="unknown option"):
        cls(root, "train", weather=["fog"])
    with pytest.raises(DataError, match="no split 'trainval'"):
        cls(root, "trainval")
    val = cls(root, "val", modalities=["rgb", "event"])
    s = val.load(0)
    assert val.attributes(val.ids[0])["case"] == "eventlowres"
    assert tuple(s["inputs"]["event"].shape) == (2, H, W)  # stored at half size, resized (nearest) like DELIVER
    assert s["inputs"]["event"][0, 2, 2] == 1  # the low-res pixel (1, 1) covers (2..3, 2..3)


def test_deliver_events_as_the_rendered_image_deliver_feeds(tmp_path):
    """event_format=image: the event/ files as the event_image sensor, the rendering / 255 (what DELIVER's code and
    the CMNeXt checkpoints it trained saw), low-resolution frames resized with nearest neighbour as DELIVER does."""
    root = make_deliver(tmp_path / "DELIVER")
    cls = DATASETS.get("deliver")
    ds = cls(root, "val", event_format="image")
    assert "event_image" in ds.description.modalities and "event" not in ds.description.modalities
    s = ds.load(0)
    image = s["inputs"]["event_image"]
    assert tuple(image.shape) == (3, H, W)
    assert image[:, 2, 2].tolist() == [0.0, 0.0, 1.0] and image[:, 4, 6].tolist() == [1.0, 0.0, 0.0]  # blue, red
    assert image[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert check_dataset(root, dataset="deliver", event_format="image")["val"] == 1
    with pytest.raises(ConfigError, match="data.options.event_format: 'frames' is not one of polarity, image"):
        cls(root, "val", event_format="frames")
    with pytest.raises(DataError, match="event_image: read the event/ files as images with "
                                        "data.options.event_format=image"):
        cls(root, "val", modalities=["rgb", "event_image"])


def test_deliver_resized_as_its_evaluation_does(tmp_path):
    """resize=N: DELIVER's test-time Resize(N) (get_val_augmentation), written out with torchvision's own tensor
    resize without antialiasing (DELIVER's pinned 0.10 had none): the shorter side 12 → 8, so 12×16 → 8×11, then each
    side up to a multiple of 32; every sensor bilinear on its 8-bit values, the label nearest, before decoding."""
    import torchvision.transforms.functional as TF

    root = make_deliver(tmp_path / "DELIVER")
    cls = DATASETS.get("deliver")
    s = cls(root, "train", resize=8, modalities=["rgb", "hha", "lidar"]).load(0)
    rgb_file = root / "img" / "cloud" / "train" / "MAP_1_point2" / "000001_rgb_front.png"
    sem_file = root / "semantic" / "cloud" / "train" / "MAP_1_point2" / "000001_semantic_front.png"

    def deliver_resize(path, mode):
        x = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[:3]
        for size in ([8, 11], [32, 32]):
            x = TF.resize(x, size, mode, antialias=False)
        return x

    rgb = deliver_resize(rgb_file, TF.InterpolationMode.BILINEAR)
    assert torch.allclose(s["inputs"]["rgb"], rgb.float() / 255, atol=1e-7)
    raw = deliver_resize(sem_file, TF.InterpolationMode.NEAREST)[0].long()
    expected = raw - 1
    expected[(raw == 0) | (raw == 255)] = 255
    assert torch.equal(s["label"], expected) and tuple(s["label"].shape) == (32, 32)
    assert {tuple(x.shape[-2:]) for x in s["inputs"].values()} == {(32, 32)}
    # depth, which DELIVER never feeds, takes the nearest pixel's CARLA encoding: only the file's two depths survive
    depth = cls(root, "train", resize=8, modalities=["depth"]).load(0)["inputs"]["depth"]
    assert sorted(depth.unique().tolist()) == pytest.approx([12.5, 250.0], rel=1e-4)
    assert tuple(cls(root, "train").load(0)["label"].shape) == (H, W)  # default: the files' own size
    with pytest.raises(ConfigError, match="data.options.resize: expected the shorter side in pixels"):
        cls(root, "train", resize="1024")


def test_deliver_check_and_broken_files(tmp_path):
    root = make_deliver(tmp_path / "DELIVER")
    assert check_dataset(root, dataset="deliver") == {"train": 3, "val": 1, "test": 1}
    bad = root / "lidar" / "cloud" / "train" / "MAP_1_point2" / "000002_lidar_front.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 8)
    msg = problems(root, "deliver")
    assert str(bad) in msg and "unreadable" in msg
    (root / "semantic" / "sun" / "test" / "MAP_10_point102" / "045050_semantic_front.png").unlink()
    assert "missing label file" in problems(root, "deliver", splits=["test"])


# ---------------------------------------------------------------------------------------------------------------------
# MCubeS: polL_color/<name>.png (8- or 16-bit), polL_aolp_sin|cos/<name>.npy, polL_dolp/<name>.npy,
# NIR_warped/<name>.png, NIR_warped_mask/<name>.png, GT/<name>.png (0..19, 255), list_folder/{train,val,test}.txt.
# Both references drop the left 192 columns, so the fake images are 200 wide.
MC_W = 200


def make_mcubes(root: Path) -> Path:
    names = {"train": ["outscene1208_2_0000000150", "outscene1208_2_0000000180"], "val": ["outscene1211_3_0000000030"],
             "test": ["outscene1213_1_0000000090"]}
    for i, name in enumerate(n for ns in names.values() for n in ns):
        rng = np.random.default_rng(i)
        if i == 1:  # a 16-bit colour image, as both loaders allow; written via OpenCV-free raw PNG
            write_png16_rgb(root / "polL_color" / f"{name}.png", (rng.integers(0, 65536, (H, MC_W, 3))).astype(">u2"))
        else:
            save_png(root / "polL_color" / f"{name}.png", rgb_image(i, H, MC_W))
        angle = rng.uniform(0, np.pi, (H, MC_W))
        save_npy(root / "polL_aolp_sin" / f"{name}.npy", np.sin(2 * angle).astype(np.float32))
        save_npy(root / "polL_aolp_cos" / f"{name}.npy", np.cos(2 * angle).astype(np.float32))
        save_npy(root / "polL_dolp" / f"{name}.npy", rng.uniform(0, 1, (H, MC_W)).astype(np.float32))
        save_png(root / "NIR_warped" / f"{name}.png", rng.integers(0, 256, (H, MC_W), dtype=np.uint8))
        mask = np.zeros((H, MC_W), np.uint8)
        mask[:, -2:] = 255
        save_png(root / "NIR_warped_mask" / f"{name}.png", mask)
        gt = (np.arange(H * MC_W).reshape(H, MC_W) % 20).astype(np.uint8)
        gt[0] = 255
        save_png(root / "GT" / f"{name}.png", gt)
    (root / "list_folder").mkdir()
    for split, ns in names.items():
        (root / "list_folder" / f"{split}.txt").write_text("\n".join(ns) + "\n")
    (root / "list_folder" / "all.txt").write_text("\n".join(n for ns in names.values() for n in ns) + "\n")
    return root


def write_png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): filter 0 rows, big-endian samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_mcubes_modalities_crop_and_labels(tmp_path):
    root = make_mcubes(tmp_path / "multimodal_dataset")
    cls = DATASETS.get("mcubes")
    ds = cls(root, "train")
    assert ds.ids == ["outscene1208_2_0000000150", "outscene1208_2_0000000180"]
    assert list(ds.description.modalities) == ["rgb", "aolp", "dolp", "nir"]
    assert ds.description.classes[0] == "asphalt" and ds.description.classes[-1] == "sky"
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(0)
    assert {k: tuple(v.shape) for k, v in s["inputs"].items()} == {
        "rgb": (3, H, 8), "aolp": (2, H, 8), "dolp": (1, H, 8), "nir": (1, H, 8)}
    sin = np.load(root / "polL_aolp_sin" / f"{ds.ids[0]}.npy")[:, 192:]
    cos = np.load(root / "polL_aolp_cos" / f"{ds.ids[0]}.npy")[:, 192:]
    assert np.allclose(s["inputs"]["aolp"].numpy(), np.stack([sin, cos]))
    gt = np.asarray(Image.open(root / "GT" / f"{ds.ids[0]}.png"))[:, 192:]
    assert np.array_equal(s["label"].numpy(), gt) and s["label"][0, 0] == 255
    assert float(ds.load(1)["inputs"]["rgb"].max()) <= 1.0  # the 16-bit image is scaled by 65535
    masked = cls(root, "train", nir_mask_ignore=True).load(0)["label"]
    assert (masked[:, -2:] == 255).all() and (masked[1:, :-2] == s["label"][1:, :-2]).all()
    full = cls(root, "train", left_crop=0).load(0)
    assert tuple(full["inputs"]["aolp"].shape) == (2, H, MC_W)
    assert cls(root, "val", val_from_test=True).ids == ["outscene1213_1_0000000090"]  # DELIVER: val reads test.txt
    # DELIVER's evaluation region (FixScaleCrop): the central window, offsets rounded as its code does
    assert "--option center_crop=1024" in cls(root, "train").evaluation_note()  # rgbx eval prints it
    assert cls(root, "train", center_crop=4).evaluation_note() is None
    center = cls(root, "train", center_crop=4).load(0)
    assert {k: tuple(v.shape[-2:]) for k, v in center["inputs"].items()} == dict.fromkeys(s["inputs"], (4, 4))
    assert torch.equal(center["label"], s["label"][4:8, 2:6]) and torch.equal(center["inputs"]["aolp"],
                                                                               s["inputs"]["aolp"][:, 4:8, 2:6])
    with pytest.raises(DataError, match=r"GT/outscene1208_2_0000000150.png: center_crop=9 is larger than the 12×8 image"):
        cls(root, "train", center_crop=9).load(0)  # the file is named
    with pytest.raises(ConfigError, match="data.options.center_crop: expected a window size"):
        cls(root, "train", center_crop=-1)
    assert check_dataset(root, dataset="mcubes") == {"train": 2, "val": 1, "test": 1}
    # a copy cropped already: the check names each file (the label's message had no path) and the option
    problems = check_problems(root, "mcubes", left_crop=MC_W)
    gt = root / "GT" / "outscene1208_2_0000000150.png"
    assert (f"{gt}: left_crop={MC_W} removes the whole {MC_W}-pixel-wide image (a copy cropped already: "
            f"data.options.left_crop=0, or --option left_crop=0)") in problems


def check_problems(root, dataset, **options) -> list[str]:
    with pytest.raises(DataError) as e:
        check_dataset(root, dataset=dataset, **options)
    return e.value.problems


def test_mcubes_missing_and_broken_files_are_named(tmp_path):
    root = make_mcubes(tmp_path / "multimodal_dataset")
    cos = root / "polL_aolp_cos" / "outscene1211_3_0000000030.npy"
    cos.unlink()
    dolp = root / "polL_dolp" / "outscene1213_1_0000000090.npy"
    dolp.write_bytes(b"\x93NUMPY garbage")
    msg = problems(root, "mcubes")
    assert str(cos) in msg and "cos" in msg
    assert str(dolp) in msg and "unreadable" in msg


# ---------------------------------------------------------------------------------------------------------------------
# KITTI-360: data_2d_raw/<seq>/image_00/data_rect/<frame>.png, data_2d_semantics/train/<seq>/image_00/semantic/
# <frame>.png (label ids), data_2d_semantics/train/2013_05_28_drive_{train,val}_frames.txt ("<img> <label>"),
# data_3d_raw/<seq>/velodyne_points/data/<frame>.bin (float32 x4), calibration/{calib_cam_to_velo,perspective}.txt.
SEQ = "2013_05_28_drive_0000_sync"
CAM_TO_VELO = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
P_RECT = np.array([[10.0, 0.0, 8.0, 0.0], [0.0, 10.0, 6.0, 0.0], [0.0, 0.0, 1.0, 0.0]])


def make_kitti360(root: Path, variant: str = "official") -> Path:
    frames = {"train": ["0000000250", "0000000251"], "val": ["0000000300"]}
    lines = {}
    for split, fs in frames.items():
        lines[split] = []
        for i, frame in enumerate(fs):
            img = f"data_2d_raw/{SEQ}/image_00/data_rect/{frame}.png"
            lab = f"data_2d_semantics/train/{SEQ}/image_00/semantic/{frame}.png"
            save_png(root / img, rgb_image(i))
            ids = np.full((H, W), 7, np.uint8)  # road
            ids[0] = 26  # car → 13
            ids[1] = 0  # unlabeled → 255
            ids[2] = 34  # garage → building (2), per labels.py
            ids[3] = 44  # unknown object → 255
            if variant == "official":
                save_png(root / lab, ids)
                velo = np.array([[10, 0, 0, 0.5], [20, 0, 0, 0.1], [-10, 0, 0, 0.2], [5, -0.5, 0, 0.3]], np.float32)
                path = root / "data_3d_raw" / SEQ / "velodyne_points" / "data" / f"{frame}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                velo.tofile(path)
            else:  # DFormer: range-view PNGs and train-id labels
                train = np.full((H, W), 0, np.uint8)
                train[0] = 13
                train[1] = 255
                save_png(root / lab.replace("data_2d_semantics", "data_2d_semantics_trainID"), train)
                rv = np.zeros((H, W), np.uint8)
                rv[6, 8] = 100
                save_png(root / "data_3d_rangeview" / SEQ / "velodyne_points" / "data" / f"{frame}.png", rv)
            lines[split].append(f"{img} {lab}")
    lists = root / "data_2d_semantics" / "train"
    lists.mkdir(parents=True, exist_ok=True)
    for split, ls in lines.items():
        (lists / f"2013_05_28_drive_{split}_frames.txt").write_text("\n".join(ls) + "\n")
    if variant == "official":
        calib = root / "calibration"
        calib.mkdir()
        (calib / "calib_cam_to_velo.txt").write_text(" ".join(map(str, CAM_TO_VELO.ravel())) + "\n")
        (calib / "perspective.txt").write_text(
            f"S_rect_00: {W} {H}\nR_rect_00: 1 0 0 0 1 0 0 0 1\nP_rect_00: {' '.join(map(str, P_RECT.ravel()))}\n")
    return root


def test_kitti360_raw_scan_projection_and_label_ids(tmp_path):
    root = make_kitti360(tmp_path / "KITTI-360")
    ds = DATASETS.get("kitti360")(root, "train")
    assert ds.ids == [f"{SEQ}/0000000250", f"{SEQ}/0000000251"]
    assert list(ds.description.modalities) == ["rgb", "lidar"] and ds.description.num_classes == 19
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(0)
    lidar = s["inputs"]["lidar"]
    assert tuple(lidar.shape) == (1, H, W)
    assert lidar[0, 6, 8] == pytest.approx(10.0)  # straight ahead; the 20 m point behind it is occluded
    assert lidar[0, 6, 9] == pytest.approx(np.hypot(5.0, 0.5), rel=1e-5)
    assert lidar.count_nonzero() == 2  # the point behind the camera is dropped
    lab = s["label"]
    assert lab[0, 0] == 13 and lab[1, 0] == 255 and lab[2, 0] == 2 and lab[3, 0] == 255 and lab[5, 5] == 0
    depth = DATASETS.get("kitti360")(root, "train", lidar_value="depth").load(0)["inputs"]["lidar"]
    assert depth[0, 6, 9] == pytest.approx(5.0)
    assert check_dataset(root, dataset="kitti360") == {"train": 2, "val": 1}


def test_kitti360_broken_scan_and_calibration(tmp_path):
    root = make_kitti360(tmp_path / "KITTI-360")
    scan = root / "data_3d_raw" / SEQ / "velodyne_points" / "data" / "0000000300.bin"
    scan.write_bytes(b"12345")
    msg = problems(root, "kitti360")
    assert str(scan) in msg and "Velodyne points" in msg
    (root / "calibration" / "perspective.txt").write_text("P_rect_00: 1 2\n")
    assert "perspective.txt" in problems(root, "kitti360")


def test_a_missing_sensor_folder_is_named(tmp_path):
    import shutil

    root = make_kitti360(tmp_path / "KITTI-360")
    shutil.rmtree(root / "data_3d_raw")
    with pytest.raises(DataError, match=r"has no modality 'lidar' \(it has: rgb\); lidar: no data_3d_raw/ \(the raw "
                                        r"Velodyne scans\) or data_3d_rangeview/"):
        DATASETS.get("kitti360")(root, "train", modalities=["rgb", "lidar"])
    mcubes = make_mcubes(tmp_path / "MCubeS")
    shutil.rmtree(mcubes / "NIR_warped")
    with pytest.raises(DataError, match=r"nir: no NIR_warped/ folder in the root"):
        DATASETS.get("mcubes")(mcubes, "train", modalities=["rgb", "nir"])


def test_kitti360_train_ids_in_the_id_folder_are_named(tmp_path):
    """Train ids (0..18, 255) saved over the official id labels used to pass the check and be read as other
    classes (trainId 13 = car read as id 13 = fence → 4); a value no id has (45..254) is named too."""
    root = make_kitti360(tmp_path / "KITTI-360")
    labels = sorted((root / "data_2d_semantics" / "train").rglob("semantic/*.png"))
    train = np.full((H, W), 0, np.uint8)
    train[0], train[1] = 13, 255
    save_png(labels[0], train)
    msg = problems(root, "kitti360")
    assert f"{labels[0]}: label values [0, 13, 255] (none above 18, with 255) look like train ids, not KITTI-360 " \
           f"label ids (0..44)" in msg and "data.options.label_format=trainid" in msg
    with pytest.raises(DataError, match="look like train ids"):  # training reads it no more than the check
        DATASETS.get("kitti360")(root, "train", check="none").load(0)
    ids = np.full((H, W), 7, np.uint8)
    ids[0] = 200
    save_png(labels[0], ids)
    assert "label values [200] are not KITTI-360 label ids" in problems(root, "kitti360")
    ids[0] = 26  # an official file with 255 (the devkit's license plate, id -1) beside real ids stays fine
    ids[1] = 255
    save_png(labels[0], ids)
    assert check_dataset(root, dataset="kitti360") == {"train": 2, "val": 1}


def test_kitti360_dformer_rangeview_and_train_ids(tmp_path):
    root = make_kitti360(tmp_path / "KITTI-360", variant="dformer")
    ds = DATASETS.get("kitti360")(root, "val")
    assert ds.label_format == "trainid" and ds.description.label.folder == "data_2d_semantics_trainID"
    s = ds.load(0)
    assert s["label"][0, 0] == 13 and s["label"][1, 0] == 255 and s["label"][5, 5] == 0
    assert s["inputs"]["lidar"][0, 6, 8] == 100  # grey levels unless lidar_scale says otherwise
    scaled = DATASETS.get("kitti360")(root, "val", lidar_scale=0.5).load(0)["inputs"]["lidar"]
    assert scaled[0, 6, 8] == 50
    assert check_dataset(root, dataset="kitti360") == {"train": 2, "val": 1}


# ---------------------------------------------------------------------------------------------------------------------
# MUSES: frame_camera/<split>/<weather>/<time_of_day>/<name>_frame_camera.png, gt_semantic/.../<name>_gt_labelTrainIds
# .png (train/val only), lidar/.../<name>_lidar.bin (float64 x6), calib.json (K for 1920x1080, lidar2rgb),
# projected_to_rgb/{lidar,event_camera}/.../<name>_{lidar,event_camera}.npz from the SDK's projection script.
MUSES_SAMPLES = [("train", "clear", "day", "REC0006_frame_040219"), ("train", "fog", "night", "REC0011_frame_008111"),
                 ("val", "snow", "day", "REC0025_frame_000523"), ("test", "rain", "night", "REC0047_frame_010010")]
LIDAR_TO_CAM = np.linalg.inv(np.vstack([CAM_TO_VELO, [0.0, 0.0, 0.0, 1.0]]))


def make_muses(root: Path, projected: bool = False) -> Path:
    K = [[1200.0, 0.0, 960.0], [0.0, 1080.0, 540.0], [0.0, 0.0, 1.0]]  # → fx 10, cx 8, fy 12, cy 6 at 16x12
    root.mkdir(parents=True)
    (root / "calib.json").write_text(json.dumps({"intrinsics": {"rgb": {"K": K}, "event": {"K": K}},
                                                 "extrinsics": {"lidar2rgb": LIDAR_TO_CAM.tolist()}}))
    for i, (split, weather, tod, name) in enumerate(MUSES_SAMPLES):
        rel = Path(split) / weather / tod
        save_png(root / "frame_camera" / rel / f"{name}_frame_camera.png", rgb_image(i))
        if split != "test":
            lab = np.zeros((H, W), np.uint8)
            lab[0] = 255  # void stays ignore
            lab[1] = 18
            save_png(root / "gt_semantic" / rel / f"{name}_gt_labelTrainIds.png", lab)
        pts = np.array([[10, 0, 0, 7, 1, 0.0], [0.5, 0, 0, 7, 1, 0.0], [-8, 0, 0, 3, 1, 0.0]], np.float64)
        path = root / "lidar" / rel / f"{name}_lidar.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        pts.tofile(path)
        if projected:
            img = np.zeros((H, W, 3), np.float32)
            img[6, 8] = (10.0, 7.0, 0.0)  # range, intensity, height
            out = root / "projected_to_rgb" / "lidar" / rel / f"{name}_lidar.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out, img)
            ev = np.zeros((H, W, 3), np.uint8)
            ev[2, 3, 0] = 4  # positive counts
            ev[4, 5, 1] = 2  # negative counts
            out = root / "projected_to_rgb" / "event_camera" / rel / f"{name}_event_camera.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out, ev)
    return root


def test_muses_raw_lidar_attributes_and_void(tmp_path):
    root = make_muses(tmp_path / "muses")
    cls = DATASETS.get("muses")
    ds = cls(root, "train")
    assert ds.ids == ["clear/day/REC0006_frame_040219", "fog/night/REC0011_frame_008111"]
    assert list(ds.description.modalities) == ["rgb", "lidar"] and ds.lidar_source == "raw"
    s = ds.load(1)
    assert s["meta"]["attributes"] == {"weather": "fog", "time_of_day": "night", "condition": "fog_night"}
    assert s["label"][0, 0] == 255 and s["label"][1, 0] == 18 and s["label"][5, 5] == 0
    lidar = s["inputs"]["lidar"]
    assert lidar[0, 6, 8] == pytest.approx(10.0) and lidar.count_nonzero() == 1  # 0.5 m and behind: dropped
    assert cls(root, "train", weather=["fog"]).ids == ["fog/night/REC0011_frame_008111"]
    assert cls(root, "train", time_of_day="day").ids == ["clear/day/REC0006_frame_040219"]
    test = cls(root, "test")
    assert test.load(0)["label"] is None  # test labels are withheld
    assert check_dataset(root, dataset="muses") == {"train": 2, "val": 1, "test": 1}


def test_muses_projected_lidar_and_events(tmp_path):
    root = make_muses(tmp_path / "muses", projected=True)
    ds = DATASETS.get("muses")(root, "val")
    assert ds.lidar_source == "projected" and list(ds.description.modalities) == ["rgb", "lidar", "event"]
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(0)
    assert tuple(s["inputs"]["lidar"].shape) == (1, H, W) and s["inputs"]["lidar"][0, 6, 8] == 10.0
    ev = s["inputs"]["event"]
    assert tuple(ev.shape) == (2, H, W) and ev[0, 2, 3] == 4 and ev[1, 4, 5] == 2 and ev.sum() == 6
    assert check_dataset(root, dataset="muses") == {"train": 2, "val": 1, "test": 1}
    # the SDK's 16-bit PNG output cannot be read losslessly: refused with a way out
    rel = Path("val") / "snow" / "day"
    npz = root / "projected_to_rgb" / "lidar" / rel / "REC0025_frame_000523_lidar.npz"
    npz.unlink()
    png = npz.with_suffix(".png")
    write_png16_rgb(png, np.full((H, W, 3), 15000, np.uint16))
    msg = problems(root, "muses", splits=["val"])
    assert str(png) in msg and ".npz" in msg
    png.unlink()
    npz.write_bytes(b"not a zip")
    msg = problems(root, "muses", splits=["val"])
    assert str(npz) in msg and "unreadable" in msg


# ---------------------------------------------------------------------------------------------------------------------
# EventScape: <split folder>/<sequence>/{rgb/data/*_<id>_image.png, depth/data/*_<id>_depth.npy,
# events/data/*_<id>_events.npy ([t, x, y, p], p 0/1), semantic/data/*_<id>_gt_labelIds.png (CARLA tags)}.
def make_eventscape(root: Path) -> Path:
    seqs = {"Town01-03_train/Town01_0000": ["0001", "0002"], "Town05_val/Town05_0003": ["0000"],
            "Town05_test/Town05_0007": ["0004"]}
    for i, (seq, ids) in enumerate(seqs.items()):
        town = seq.split("/")[1]
        for fid in ids:
            d = root / seq
            save_png(d / "rgb" / "data" / f"{town}_{fid}_image.png", rgb_image(i))
            depth = np.full((H, W), 20.0, np.float32)
            depth[0, 0] = np.inf
            save_npy(d / "depth" / "data" / f"{town}_{fid}_depth.npy", depth)
            ev = np.array([[0.1, 3, 2, 1], [0.2, 3, 2, 1], [0.3, 5, 4, 0], [0.4, 100, 2, 1]], np.float64)
            save_npy(d / "events" / "data" / f"{town}_{fid}_events.npy", ev)
            tags = np.full((H, W), 7, np.uint8)  # Road → 6
            tags[0] = 0  # Unlabeled → ignore
            tags[1] = 22  # Terrain → 21 (CARLA >= 0.9.10)
            save_png(d / "semantic" / "data" / f"{town}_{fid}_gt_labelIds.png", np.stack([tags] * 3, -1))
    return root


def test_eventscape_modalities_events_and_labels(tmp_path):
    root = make_eventscape(tmp_path / "EventScape")
    cls = DATASETS.get("eventscape")
    ds = cls(root, "train")
    assert ds.ids == ["Town01-03_train/Town01_0000/Town01_0000_0001", "Town01-03_train/Town01_0000/Town01_0000_0002"]
    assert ds.description.num_classes == 22 and ds.description.classes[6] == "Road"
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(0)
    assert {k: tuple(v.shape) for k, v in s["inputs"].items()} == {
        "rgb": (3, H, W), "depth": (1, H, W), "event": (2, H, W)}
    assert s["inputs"]["depth"][0, 5, 5] == 20.0 and s["inputs"]["depth"][0, 0, 0] == 0.0  # inf → invalid
    ev = s["inputs"]["event"]
    assert ev[0, 2, 3] == 2 and ev[1, 4, 5] == 1 and ev.sum() == 3  # the out-of-image event is dropped
    assert s["label"][0, 0] == 255 and s["label"][1, 0] == 21 and s["label"][5, 5] == 6
    assert check_dataset(root, dataset="eventscape") == {"train": 2, "val": 1, "test": 1}
    listed = root / "val.txt"
    listed.write_text("Town05_val/Town05_0003/rgb/data/Town05_0003_0000_image.png\n")
    assert cls(root, "val", split_file="{split}.txt").ids == ["Town05_val/Town05_0003/Town05_0003_0000"]


def test_eventscape_tag_set_and_broken_events(tmp_path):
    root = make_eventscape(tmp_path / "EventScape")
    cls = DATASETS.get("eventscape")
    ds = cls(root, "val", tags=13, check="none")
    assert ds.description.num_classes == 12
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    assert any("out of range" in p for p in ds.find_problems(full=True))
    bad = root / "Town05_val" / "Town05_0003" / "events" / "data" / "Town05_0003_0000_events.npy"
    np.save(bad, np.zeros((5, 3)))
    msg = problems(root, "eventscape", splits=["val"])
    assert str(bad) in msg and "(N, 4)" in msg


# ---------------------------------------------------------------------------------------------------------------------
# A partial download: `rgbx data check` skips a benchmark split that is not on disk and says so

@pytest.mark.parametrize("dataset, make, remove, kept", [
    ("deliver", make_deliver, lambda r: [p for p in (r / "img").glob("*/test")], {"train": 3, "val": 1}),
    ("mcubes", make_mcubes, lambda r: [r / "list_folder" / "test.txt"], {"train": 2, "val": 1}),
    ("muses", make_muses, lambda r: [r / "frame_camera" / "val"], {"train": 2, "test": 1}),
    ("eventscape", make_eventscape, lambda r: [r / "Town05_test"], {"train": 2, "val": 1}),
    ("kitti360", make_kitti360, lambda r: list(r.rglob("*val*.txt")), {"train": 2}),
])
def test_check_skips_a_benchmark_split_that_is_not_on_disk(tmp_path, capsys, dataset, make, remove, kept):
    import shutil

    from rgbx.cli.main import main
    from rgbx.errors import SplitNotFoundError

    root = make(tmp_path / dataset)
    gone = remove(root)
    assert gone
    for path in gone:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert check_dataset(root, dataset=dataset) == kept  # was: a "problem" for the missing split
    absent = next(s for s in DATASETS.get(dataset).SPLITS if s not in kept)
    assert main(["data", "check", str(root), "--dataset", dataset]) == 0
    assert f"not on disk, skipped: split {absent}" in capsys.readouterr().out
    with pytest.raises(SplitNotFoundError):  # asked for by name: its absence is the error, naming the file or folder
        DATASETS.get(dataset)(root, absent)
    assert main(["data", "check", str(root), "--dataset", dataset, "--split", absent]) == 2
    assert "1 problem(s)" in capsys.readouterr().err
