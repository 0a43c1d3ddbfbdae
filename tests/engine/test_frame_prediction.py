"""rgbx.Predictor on raw sensor frames in memory (a driver's arrays), as a robot's program calls it: the same
classes as `rgbx predict` on the same data written to files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import rgbx
from rgbx.engine.predict import frame_sample
from rgbx.errors import ConfigError, DataError
from rgbx.models.model_file import save_model


def rgbd_model_file(folder, fusion: str = "cmx"):
    """A random MiT-nano RGB-D model file with 4 named classes (also used by test_sensor_screening)."""
    torch.manual_seed(0)
    model = rgbx.create_model(backbone="mit_nano", fusion=fusion, modalities=["rgb", "depth"], num_classes=4,
                              head_channels=16)
    path = folder / "model.safetensors"
    save_model(path, model, {"classes": ["floor", "wall", "robot", "person"], "ignore_index": 255})
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return rgbd_model_file(tmp_path_factory.mktemp("model"))


def frames(seed=0, h=40, w=56):
    """Raw RGB-D frames as a driver gives them: 8-bit RGB channels last, 16-bit depth in mm."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(500, 9000, (h, w), dtype=np.uint16)


def test_arrays_in_every_layout_give_the_file_prediction(model_file, tmp_path):
    rgb, depth_mm = frames()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(depth_mm).save(tmp_path / "depth.png")
    segment = rgbx.Predictor.from_file(model_file)
    from_files = segment({"rgb": tmp_path / "rgb.png", "depth": str(tmp_path / "depth.png")})
    assert from_files.shape == (40, 56) and from_files.dtype == np.int64
    assert segment.classes == ["floor", "wall", "robot", "person"]
    # channels last, channels first, torch tensors, depth in metres as floats: the same frame, the same classes
    same = [
        {"rgb": rgb, "depth": depth_mm},
        {"rgb": rgb.transpose(2, 0, 1), "depth": depth_mm[None]},
        {"rgb": torch.from_numpy(rgb), "depth": torch.from_numpy(depth_mm.astype(np.int32))},
        {"rgb": rgb.astype(np.float32) / 255, "depth": depth_mm.astype(np.float32) / 1000},
    ]
    for inputs in same:
        np.testing.assert_array_equal(segment(inputs), from_files)
    # what the model sees equals the dataset path's sample in physical units
    sample = frame_sample({"rgb": rgb, "depth": depth_mm})
    torch.testing.assert_close(sample["inputs"]["depth"], torch.from_numpy(depth_mm.astype(np.float32))[None] / 1000)
    # any subset of the sensors: a missing one is what the model was trained for
    only_rgb = segment({"rgb": rgb})
    with torch.no_grad():
        expected = segment.model(
            {"rgb": rgbx.modalities.get_modality("rgb").normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None] / 255)}
        ).logits.argmax(1)[0].numpy()
    np.testing.assert_array_equal(only_rgb, expected)


def test_bad_frames_say_what_is_wrong(model_file):
    segment = rgbx.Predictor.from_file(model_file)
    rgb, depth_mm = frames()
    with pytest.raises(DataError, match=r"sensor 'depth': an array of shape \(40, 56, 3\); expected \(H, W, 1\) or "
                                        r"\(1, H, W\) or \(H, W\)"):
        segment({"rgb": rgb, "depth": np.stack([depth_mm] * 3, -1)})
    with pytest.raises(DataError, match="the sensors' frames differ in size: rgb 40x56, depth 20x28"):
        segment({"rgb": rgb, "depth": depth_mm[::2, ::2]})
    with pytest.raises(DataError, match=r"sensor\(s\) 'thermal': this model takes rgb, depth \(any subset\)"):
        segment({"rgb": rgb, "thermal": np.zeros((40, 56), np.uint8)})
    # values that are neither the sensor's encoding nor its physical units (they used to give a wrong prediction)
    with pytest.raises(DataError, match="sensor 'rgb': float values up to 2.*floats are read as intensity 0-1"):
        segment({"rgb": rgb.astype(np.float32)})
    with pytest.raises(DataError, match="sensor 'depth': uint8 values; 'depth' is read as its encoding "
                                        r"\(uint16 × 0.001 = m\)"):
        segment({"rgb": rgb, "depth": (depth_mm // 256).astype(np.uint8)})
    with pytest.raises(DataError, match="sensor 'depth': float values up to .*floats are read as m"):
        segment({"rgb": rgb, "depth": depth_mm.astype(np.float32)})
    with pytest.raises(DataError, match="sensor 'rgb': integer values up to 1020"):
        segment({"rgb": rgb.astype(np.uint16) * 4})
    # the same sensor in its other forms is accepted: wider integers, floats in physical units
    same = segment({"rgb": rgb, "depth": depth_mm})
    assert (segment({"rgb": rgb.astype(np.int64), "depth": depth_mm.astype(np.int32)}) == same).all()
    assert (segment({"rgb": rgb / np.float32(255), "depth": depth_mm / np.float32(1000)}) == same).mean() > 0.999
    with pytest.raises(DataError, match=r"sensor 'rgb': an empty frame \(0x56 pixels\)"):
        segment({"rgb": rgb[:0]})
    with pytest.raises(DataError, match="at least one sensor"):
        segment({})
    with pytest.raises(ConfigError, match="unknown modality 'sonar'"):
        segment({"sonar": depth_mm})
    with pytest.raises(DataError, match="dtype <U1"):
        segment({"rgb": np.full((4, 4, 3), "a")})


def test_an_exported_file_predicts_the_same(model_file, tmp_path):
    pytest.importorskip("onnxruntime")
    from rgbx.engine.export import export_onnx

    onnx_path = tmp_path / "m.onnx"
    model, info = rgbx.load_model(model_file)
    export_onnx(model, onnx_path, size=(64, 64), dataset=info["dataset"])
    rgb, depth_mm = frames(1, 64, 64)
    torch_labels = rgbx.Predictor.from_file(model_file)({"rgb": rgb, "depth": depth_mm})
    onnx_labels = rgbx.Predictor.from_file(onnx_path)({"rgb": rgb, "depth": depth_mm})
    assert (torch_labels == onnx_labels).mean() > 0.999
    with pytest.raises(ConfigError, match="runs in onnxruntime"):
        rgbx.Predictor.from_file(onnx_path, fast=True)
    with pytest.raises(ConfigError, match="only the openvino runtime computes in bf16"):
        rgbx.Predictor.from_file(onnx_path, runtime_precision="bf16")
    with pytest.raises(ConfigError, match="choose how an exported .onnx file runs"):
        rgbx.Predictor.from_file(model_file, runtime="openvino")
    pytest.importorskip("openvino")
    in_openvino = rgbx.Predictor.from_file(onnx_path, runtime="openvino")({"rgb": rgb, "depth": depth_mm})
    assert (in_openvino == onnx_labels).mean() > 0.999


def test_devices_by_name(model_file):
    assert rgbx.Predictor.from_file(model_file, device="auto").device.type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device 'banana': expected auto, cpu, cuda or cuda:N"):
        rgbx.Predictor.from_file(model_file, device="banana")
