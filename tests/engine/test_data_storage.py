"""A model trained on data stored otherwise than its sensors' built-in encodings (16-bit thermal in a dataset.yaml)
records that storage, and reads files / writes ONNX normalisation with it; an exported file registers the sensors
rgbx does not define; folder inputs of unequal sensor sets are counted."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rgbx.data.description import load_description, write_description
from rgbx.data.files import discover_samples, read_modality_file
from rgbx.engine.checkpoint import save_model
from rgbx.engine.predict import Predictor
from rgbx.errors import DataError
from rgbx.modalities import (
    MODALITIES,
    declare_modality,
    get_modality,
    read_array,
    spec_from_dict,
    write_array,
)
from rgbx.models import create_model
from rgbx.models.model_file import dataset_record, read_model_info, recorded_storage

SCALE = 1.5259e-05  # 16-bit thermal, 0-65535 → 0-1
CLASSES = {"name": "rig", "classes": ["ground", "box", "person"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
           "ignore_index": 255}
RADAR = {"channels": 1, "mean": [0.0], "std": [20.0], "unit": "dB", "sparse": True, "invalid_value": 0.0,
         "photometric": ["gaussian_noise"], "colormap": "turbo", "dtype": "uint16", "scale": 0.01,
         "description": "77 GHz radar"}
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None
                                or importlib.util.find_spec("onnxruntime") is None,
                                reason="needs onnx and onnxruntime (pip install 'rgbx[export]')")


pytestmark = pytest.mark.usefixtures("modality_registry_restored")  # sensors declared here do not stay


def rig_description(root):
    """A dataset.yaml with thermal stored as uint16 × SCALE (the built-in thermal is uint8 / 255)."""
    for folder in ("rgb", "ther", "label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_description(root, **CLASSES, modalities={
        "rgb": {}, "thermal": {"folder": "ther", "dtype": "uint16", "scale": SCALE, "optional": True}})
    return load_description(root)


@pytest.fixture
def rig_model(tmp_path):
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "thermal"], num_classes=3,
                         head_channels=16).eval()
    description = rig_description(tmp_path / "rig")
    new = save_model(tmp_path / "model.safetensors", model, dataset_record(description, model.modalities))
    old = save_model(tmp_path / "old.safetensors", model, description.to_dict())  # a file without storage
    return model, new, old


def hot_thermal(path, h=32, w=40):
    """A 16-bit thermal file with values up to 45000 (0.69 in physical units)."""
    values = np.linspace(1000, 45000, h * w).reshape(1, h, w).astype(np.uint16)
    write_array(path, values)
    return path, torch.from_numpy(values.astype(np.float32) * np.float32(SCALE))


def test_the_model_file_records_its_datas_storage_and_predict_reads_files_with_it(rig_model, tmp_path):
    model, new, old = rig_model
    storage = recorded_storage(read_model_info(new)["dataset"])
    assert storage["thermal"] == {"encoding": "png", "dtype": "uint16", "scale": SCALE}
    assert storage["rgb"]["dtype"] == "uint8" and "nir" not in storage
    assert recorded_storage(read_model_info(old)["dataset"]) == {}
    path, expected = hot_thermal(tmp_path / "t.png")

    predictor = Predictor.from_file(new)
    assert predictor.storage["thermal"]["scale"] == SCALE
    torch.testing.assert_close(read_modality_file(path, "thermal", predictor.storage), expected)
    labels = predictor({"thermal": str(path)})
    with torch.no_grad():
        reference = model({"thermal": get_modality("thermal").normalize(expected)[None]}).logits.argmax(1)[0]
    assert (torch.from_numpy(labels) == reference).all()

    # a file without the record keeps today's reading: the built-in uint8 encoding refuses 16-bit values, and says
    # how to give the storage
    with pytest.raises(DataError, match=r"up to 45000.*model file records.*storage=\{'thermal'"):
        Predictor.from_file(old)({"thermal": str(path)})
    with pytest.raises(DataError, match="up to 45000"):
        read_modality_file(path, "thermal")
    given = Predictor.from_file(old, storage={"thermal": {"dtype": "uint16", "scale": SCALE}})
    assert (given({"thermal": str(path)}) == labels).all()


@needs_onnx
def test_the_exported_normalisation_is_the_training_datas(rig_model, tmp_path):
    from rgbx.cli.main import main
    from rgbx.engine.export import read_onnx_metadata

    _, new, old = rig_model
    for weights in (new, old):
        assert main(["export", str(weights), "--out", str(tmp_path / f"{weights.stem}.onnx"), "--size", "32x40",
                     "--exporter", "torchscript"]) == 0
    thermal = read_onnx_metadata(tmp_path / "model.onnx")["normalization"]["thermal"]
    assert (thermal["dtype"], thermal["scale"], thermal["mean"], thermal["std"]) == ("uint16", SCALE, [0.5], [0.25])
    builtin = read_onnx_metadata(tmp_path / "old.onnx")["normalization"]["thermal"]
    assert (builtin["dtype"], builtin["scale"]) == ("uint8", get_modality("thermal").scale)  # as before

    # the exported file read by rgbx predict: 16-bit thermal at the training scale, as the model file reads it
    path, _ = hot_thermal(tmp_path / "t.png")
    onnx = Predictor.from_file(tmp_path / "model.onnx")
    assert onnx.storage["thermal"]["scale"] == SCALE
    assert (onnx({"thermal": str(path)}) == Predictor.from_file(new)({"thermal": str(path)})).all()


@needs_onnx
@pytest.mark.parametrize("sensors_key", [True, False], ids=["sensors", "older-file-normalisation-only"])
def test_an_exported_file_registers_the_sensors_rgbx_does_not_define(tmp_path, sensors_key):
    import onnx as onnx_lib

    from rgbx.engine.export import export_onnx, read_onnx_metadata

    declare_modality(spec_from_dict("radar", RADAR), "test")
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "radar"], num_classes=3,
                         head_channels=16).eval()
    path = export_onnx(model, tmp_path / "radar.onnx", size=(32, 40), dataset=CLASSES, exporter="torchscript")
    assert read_onnx_metadata(path)["sensors"]["radar"]["sparse"] is True
    if not sensors_key:  # as written before the exporter stated the sensors' fields
        proto = onnx_lib.load(str(path))
        kept = [p for p in proto.metadata_props if p.key != "sensors"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        onnx_lib.save(proto, str(path))
    del MODALITIES._items["radar"]  # a process that never read the dataset.yaml that declared it

    echo = np.zeros((32, 40), np.uint16)
    echo[8:16] = 3000
    write_array(tmp_path / "f.png", echo[None])
    predictor = Predictor.from_file(path)
    spec = get_modality("radar")
    assert (spec.channels, spec.scale, spec.std, spec.unit) == (1, 0.01, (20.0,), "dB")
    assert spec.sparse is sensors_key  # the full fields when the file states them
    samples = discover_samples({"radar": tmp_path / "f.png"})
    labels = predictor({"radar": str(samples[0][1]["radar"])})
    x = spec.normalize(torch.from_numpy(echo[None].astype(np.float32) * np.float32(0.01)))[None]
    with torch.no_grad():
        assert (torch.from_numpy(labels) == model({"radar": x}).logits.argmax(1)[0]).all()


def test_folder_inputs_of_unequal_sensor_sets_are_counted(tmp_path, capsys):
    for sensor, ids in (("rgb", range(4)), ("depth", range(14))):
        (tmp_path / sensor).mkdir()
        for i in ids:
            write_array(tmp_path / sensor / f"{i:04d}.png", np.zeros((3 if sensor == "rgb" else 1, 4, 4), np.uint8))
    lines = []
    found = discover_samples({"rgb": tmp_path / "rgb", "depth": tmp_path / "depth"}, report=lines.append)
    assert len(found) == 14 and len(lines) == 1
    assert "rgb+depth: 4 frames, depth: 10 frames" in lines[0]
    discover_samples({"rgb": tmp_path / "rgb", "depth": tmp_path / "depth"})  # printed by default (rgbx predict)
    assert "rgb+depth: 4 frames, depth: 10 frames" in capsys.readouterr().out
    # every frame with the same sensors: nothing to say
    discover_samples({"rgb": tmp_path / "rgb", "depth": tmp_path / "rgb"}, report=lines.append)
    assert len(lines) == 1


def test_rgbx_train_records_the_storage_of_folder_data_only(tmp_path):
    """The trainer records the storage where files become physical units by their scale alone (a dataset.yaml);
    a benchmark loader with its own decoding (NYU's 8-bit relative depth) records none, so predict keeps reading
    loose files by the sensors' own specs there."""
    import yaml

    import rgbx
    from rgbx.data import DATASETS
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "data", n=4, size=(32, 32), modalities=("rgb", "thermal"))
    described = yaml.safe_load((data / "dataset.yaml").read_text())
    described["modalities"]["thermal"].update(dtype="uint16", scale=SCALE)
    (data / "dataset.yaml").write_text(yaml.safe_dump(described))
    for png in (data / "thermal").glob("*.png"):  # the toy's 8-bit thermal as 16-bit files
        write_array(png, (np.asarray(read_array(png), np.uint16) * 257).astype(np.uint16))
    rgbx.train("synth_cmx_b0", [f"data.root={data}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano",
                                "model.head_channels=16", "model.modalities=[rgb,thermal]", "train.iters=1",
                                "train.batch_size=2", "train.eval_every=0", "data.crop_size=[32,32]",
                                "data.num_workers=0", "train.eval_group_by=null"])
    storage = recorded_storage(read_model_info(tmp_path / "run" / "model.safetensors")["dataset"])
    assert storage == {"rgb": {"encoding": "png", "dtype": "uint8", "scale": pytest.approx(1 / 255)},
                       "thermal": {"encoding": "png", "dtype": "uint16", "scale": SCALE}}
    assert DATASETS.get("folder").decodes_by_scale() and DATASETS.get("shards").decodes_by_scale()
    for name in ("nyudepthv2", "mfnet", "deliver", "multi"):
        assert not DATASETS.get(name).decodes_by_scale(), name


def test_a_float_storage_leaves_loose_files_to_the_sensors_own_encoding(tmp_path):
    """Training data in float .npy metres: a 16-bit depth PNG given to predict is still millimetres (it was read
    with the recorded scale 1: 3000 m)."""
    write_array(tmp_path / "d.png", np.full((1, 8, 8), 3000, np.uint16))
    np.save(tmp_path / "d.npy", np.full((8, 8), 3.0, np.float32))
    storage = {"depth": {"encoding": "npy", "dtype": "float32", "scale": 1.0}}
    for name in ("d.png", "d.npy"):
        assert read_modality_file(tmp_path / name, "depth", storage).max().item() == pytest.approx(3.0)


def test_a_sensor_stored_at_a_lower_resolution_is_resampled_for_predict_as_for_training(tmp_path, capsys):
    """Depth stored at half the camera's resolution (`resize: nearest` in dataset.yaml) trained fine, but rgbx predict
    refused the same rig's files ("differ in size"). The model file records the resize, and predict (files, folders,
    frames, ONNX) resamples those sensors to the others' size as the dataset did; a model without it still refuses."""
    from rgbx.cli.main import main
    from rgbx.data.files import resize_nearest

    root = tmp_path / "rig"
    for folder in ("rgb", "depth", "label"):
        (root / folder).mkdir(parents=True)
    write_description(root, **CLASSES, modalities={"rgb": {}, "depth": {"dtype": "uint16", "scale": 0.001,
                                                                         "resize": "nearest"}})
    description = load_description(root)
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).eval()
    new = save_model(tmp_path / "model.safetensors", model, dataset_record(description, model.modalities))
    old = save_model(tmp_path / "old.safetensors", model, description.to_dict())
    assert recorded_storage(read_model_info(new)["dataset"])["depth"]["resize"] == "nearest"
    assert main(["info", str(new)]) == 0
    assert ("depth png uint16 ×0.001, resampled (nearest) to the others' size" in
            " ".join(capsys.readouterr().out.split()))
    rng = np.random.default_rng(0)
    frames = tmp_path / "frames"
    for sub in ("rgb", "depth", "depth_full"):
        (frames / sub).mkdir(parents=True)
    rgb = rng.integers(0, 255, (3, 32, 40)).astype(np.uint8)
    depth = rng.integers(500, 9000, (1, 16, 20)).astype(np.uint16)
    write_array(frames / "rgb" / "f0.png", rgb)
    write_array(frames / "depth" / "f0.png", depth)
    write_array(frames / "depth_full" / "f0.png", resize_nearest(depth, (32, 40)))  # what the dataset loads

    predictor = Predictor.from_file(new)
    labels = predictor({"rgb": str(frames / "rgb" / "f0.png"), "depth": str(frames / "depth" / "f0.png")})
    full = predictor({"rgb": str(frames / "rgb" / "f0.png"), "depth": str(frames / "depth_full" / "f0.png")})
    assert labels.shape == (32, 40) and (labels == full).all()
    with pytest.raises(DataError, match=r"depth 16x20; resample them to one size.*'resize: nearest'.*none here"):
        Predictor.from_file(old)({"rgb": str(frames / "rgb" / "f0.png"), "depth": str(frames / "depth" / "f0.png")})

    assert main(["predict", str(new), f"rgb={frames / 'rgb'}", f"depth={frames / 'depth'}",
                 "--out", str(tmp_path / "out")]) == 0
    written = np.asarray(read_array(tmp_path / "out" / "labels" / "f0.png"))[0]
    assert (written == full).all()
    assert main(["predict", str(old), f"rgb={frames / 'rgb'}", f"depth={frames / 'depth'}",
                 "--out", str(tmp_path / "old_out")]) != 0

    if importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None:
        from rgbx.engine.export import read_onnx_metadata

        assert main(["export", str(new), "--out", str(tmp_path / "m.onnx"), "--size", "32x40",
                     "--exporter", "torchscript"]) == 0
        assert read_onnx_metadata(tmp_path / "m.onnx")["normalization"]["depth"]["resize"] == "nearest"
        capsys.readouterr()
        assert main(["info", str(tmp_path / "m.onnx")]) == 0
        assert "stored at another resolution: resampled (nearest)" in " ".join(capsys.readouterr().out.split())
        onnx = Predictor.from_file(tmp_path / "m.onnx")
        assert (onnx({"rgb": str(frames / "rgb" / "f0.png"), "depth": str(frames / "depth" / "f0.png")}) == full).all()
