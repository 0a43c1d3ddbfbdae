"""A sensor rgbx does not define, declared in dataset.yaml (``sensor:``): trained on, saved with the model, usable in
a process that never read the dataset, and every wrong declaration named."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml

from rgbx.data.description import load_description, write_description
from rgbx.errors import DataError
from rgbx.modalities import MODALITIES, get_modality, write_array

RADAR = {"channels": 1, "mean": [0.0], "std": [20.0], "unit": "dB", "sparse": True, "invalid_value": 0.0,
         "photometric": ["gaussian_noise"], "colormap": "turbo", "description": "77 GHz radar, range-azimuth image"}


pytestmark = pytest.mark.usefixtures("modality_registry_restored")  # sensors declared here do not stay


def radar_dataset(root, n=6, size=(16, 20), sensor=None, name="radar"):
    rng = np.random.default_rng(0)
    h, w = size
    for folder in ("rgb", name, "label", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"s{i}" for i in range(n)]
    for sid in ids:
        label = np.zeros((h, w), np.uint8)
        label[h // 2 :, : w // 2] = 1
        write_array(root / "rgb" / f"{sid}.png", rng.integers(0, 255, (3, h, w)).astype(np.uint8))
        echo = np.zeros((1, h, w), np.uint16)
        echo[0][label == 1] = 3000  # 30 dB where class 1 is
        write_array(root / name / f"{sid}.png", echo)
        write_array(root / "label" / f"{sid}.png", label)
    (root / "splits" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    write_description(root, name="rig", classes=["ground", "car"], palette=[[0, 0, 0], [0, 0, 142]],
                      ignore_index=255, modalities={"rgb": {}, name: {"encoding": "png", "dtype": "uint16",
                                                                      "scale": 0.01, "sensor": sensor or RADAR}})
    return root


def test_a_declared_sensor_is_registered_with_its_storage_and_normalisation(tmp_path):
    description = load_description(radar_dataset(tmp_path / "d"))
    spec = get_modality("radar")
    assert (spec.channels, spec.dtype, spec.scale, spec.unit, spec.std, spec.sparse, spec.colormap) == (
        1, "uint16", 0.01, "dB", (20.0,), True, "turbo")
    assert description.modalities["radar"].scale == 0.01 and description.declared["radar"] is spec
    # opened again (train and val splits): the same declaration is no conflict
    load_description(tmp_path / "d")

    # unpickled where no dataset was read (a loader worker started with spawn): the sensor is declared there too
    blob = tmp_path / "description.pkl"
    blob.write_bytes(pickle.dumps(description))
    code = ("import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read()); "
            "from rgbx.modalities import get_modality; s = get_modality('radar'); print(s.channels, s.std, s.unit)")
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "(20.0,)", "dB"]


def test_a_declared_sensor_stored_as_npy_takes_float32_as_a_known_one_does(tmp_path):
    """docs/dataset-format.md: a modality stored as npy takes that encoding's defaults (float32, scale 1); a declared
    one took the sensor's uint8 and refused every float32 file."""
    from rgbx.data.datasets.folder import FolderDataset

    root = radar_dataset(tmp_path / "d")
    for png in (root / "radar").glob("*.png"):
        write_array(png.with_suffix(".npy"), np.full((1, 16, 20), 30.5, np.float32), "npy")
        png.unlink()
    raw = yaml.safe_load((root / "dataset.yaml").read_text())
    raw["modalities"]["radar"] = {"encoding": "npy", "sensor": RADAR}
    (root / "dataset.yaml").write_text(yaml.safe_dump(raw))
    load_description(root)
    spec = get_modality("radar")
    assert (spec.encoding, spec.dtype, spec.scale) == ("npy", "float32", 1.0)
    dataset = FolderDataset(root, "train", check="full")
    assert float(dataset.load(0)["inputs"]["radar"].max()) == 30.5  # dB, as stored (× 1)


@pytest.mark.parametrize("sensor, expected", [
    ({"mean": [0.0]}, "'channels' is required"),
    ({**RADAR, "gain": 2}, "unknown field gain"),
    ({**RADAR, "scale": 0.5}, "scale belong to modalities.radar itself"),
    ({**RADAR, "photometric": ["color_jitter", "sparkle"]}, "unknown photometric transform sparkle"),
    ({**RADAR, "std": [1.0, 2.0]}, "std has 2 values for 1 channels"),
    ({**RADAR, "std": [0.0]}, "std must be positive"),
    ({**RADAR, "colormap": "jet"}, "colormap must be one of"),
    ({**RADAR, "mean": 0.0}, "mean must be a list, got 0.0"),
    ({**RADAR, "photometric": "gaussian_noise"}, "photometric must be a list, got 'gaussian_noise'"),
    ("radar", "must be a mapping"),
])
def test_a_wrong_declaration_is_named(tmp_path, sensor, expected):
    with pytest.raises(DataError) as e:
        load_description(radar_dataset(tmp_path / "d", sensor=sensor))
    assert "modalities.radar.sensor" in str(e.value) and expected in str(e.value)
    assert "radar" not in MODALITIES


def test_two_different_declarations_of_one_name_conflict(tmp_path):
    load_description(radar_dataset(tmp_path / "a"))
    with pytest.raises(DataError, match=r"sensor 'radar' is already registered with other values: std \[5.0\] "
                                        r"\(registered: \[20.0\]\)"):
        load_description(radar_dataset(tmp_path / "b", sensor={**RADAR, "std": [5.0]}))
    with pytest.raises(DataError) as e:  # one path, and what is wrong: not the fields that differ
        load_description(radar_dataset(tmp_path / "c", sensor={"channels": 1}, name="rgb"))
    assert all(line.count(str(tmp_path / "c")) <= 1 for line in str(e.value).splitlines())
    assert "modalities.rgb.sensor: 'rgb' is a built-in sensor, which cannot be redefined; drop 'sensor:'" in str(e.value)
    with pytest.raises(DataError) as e:
        load_description(radar_dataset(tmp_path / "e", sensor={**RADAR, "std": [5.0]}))
    assert all(line.count(str(tmp_path / "e")) <= 1 for line in str(e.value).splitlines())
    assert "modalities.radar.sensor: sensor 'radar' is already registered with other values: std" in str(e.value)


def test_an_undeclared_unknown_sensor_says_how_to_declare_it(tmp_path):
    root = radar_dataset(tmp_path / "d")
    raw = yaml.safe_load((root / "dataset.yaml").read_text())
    del raw["modalities"]["radar"]["sensor"]
    (root / "dataset.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match="unknown modality 'radar'.*declared with 'sensor: {channels: N, ...}'"):
        load_description(root)


def test_train_on_a_declared_sensor_then_use_the_model_file_alone(tmp_path, capsys):
    from rgbx.cli.main import main
    from rgbx.engine.config import load_config
    from rgbx.engine.report import Reporter
    from rgbx.engine.trainer import Trainer

    root = radar_dataset(tmp_path / "d")
    cfg = load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano",
                             "model.head_channels=16", "model.modalities=[rgb,radar]", "data.crop_size=[16,16]",
                             "data.num_workers=1", "train.batch_size=2", "train.eval_batch_size=2", "train.iters=2",
                             "optim.warmup_iters=1", "method.modality_dropout=0.3"])
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    weights = tmp_path / "run" / "model.safetensors"

    # one fresh process that never read dataset.yaml: the model file brings the sensor with it, for the Python API,
    # `rgbx info` and `rgbx eval` (where the file declares it first, then the dataset, the same)
    code = ("import sys, torch, rgbx; from rgbx.modalities import get_modality; from rgbx.cli.main import main; "
            "model, info = rgbx.load_model(sys.argv[1]); s = get_modality('radar'); "
            "out = model({'radar': torch.zeros(1, 1, 32, 32)}); print(s.std, s.unit, tuple(out.logits.shape)); "
            "sys.exit(main(['info', sys.argv[1]]) or main(['eval', sys.argv[1], '--data', sys.argv[2], '--split', "
            "'val', '--anymodal']))")
    out = subprocess.run([sys.executable, "-c", code, str(weights), str(root)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "(20.0,) dB (1, 2, 32, 32)" in out.stdout
    assert ("sensor radar (not built into rgbx; stated in the file): 1 channel(s), png uint16 ×0.01 dB, normalised "
            "with mean [0.0] std [20.0]") in out.stdout
    assert "rgb+radar" in out.stdout

    # the dataset later declares the sensor otherwise than the model was trained with: named, not silently used
    before = weights.read_bytes()
    raw = yaml.safe_load((root / "dataset.yaml").read_text())
    raw["modalities"]["radar"]["sensor"]["std"] = [5.0]
    (root / "dataset.yaml").write_text(yaml.safe_dump(raw))
    assert main(["eval", str(weights), "--data", str(root), "--split", "val"]) != 0
    assert ("sensor 'radar' is already registered with other values: std [5.0] (registered: [20.0])"
            in capsys.readouterr().err)
    assert weights.read_bytes() == before


def test_a_narrower_file_of_a_declared_sensor_is_named_without_depths_reason(tmp_path):
    from rgbx.data.files import check_encoding

    radar_dataset(tmp_path / "d")
    load_description(tmp_path / "d")
    with pytest.raises(DataError) as e:
        check_encoding(np.zeros((1, 4, 4), np.uint8), get_modality("radar"), "r.png")
    assert "r.png: uint8 values; 'radar' is read as its encoding (uint16 × 0.01 = dB)" in str(e.value)
    assert "depth" not in str(e.value)
    with pytest.raises(DataError, match="an 8-bit depth image holds relative depth"):
        check_encoding(np.zeros((1, 4, 4), np.uint8), get_modality("depth"), "d.png")
