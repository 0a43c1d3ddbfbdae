"""What the commands print says what it is: the progress line of ``rgbx bench`` in the table's units, sample ids never
cut in ``rgbx data stats``, the dataset named the same way whatever the split, an empty ``sensor=`` path refused,
and the flag (or keyword) to give where a split is missing."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rgbx.cli.main import main
from rgbx.engine.checkpoint import save_model
from rgbx.errors import ConfigError
from rgbx.models import create_model
from tests.conftest import make_dataset


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``rgbx argv``, argparse's own exits included."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("messages") / "m.safetensors"
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).eval()
    save_model(path, model, {"classes": ["ground", "box", "person"]})
    return path


def test_bench_progress_line_gives_throughput_in_images_per_second_as_the_table(capsys):
    status, out, _ = run(["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth",
                          "--num-classes", "4", "--head-channels", "16", "--size", "32x32", "--throughput-batch", "2",
                          "--warmup", "0", "--repeats", "1", "--what", "latency", "throughput", "--device", "cpu",
                          "--options", "exact"], capsys)
    assert status == 0
    line = next(line for line in out.splitlines() if line.startswith("exact:"))
    found = re.search(r"throughput ([0-9.]+) img/s \(batch 2: ([0-9.]+) ms\)", line)
    assert found, line
    ips, ms = map(float, found.groups())
    assert ips == pytest.approx(2 * 1000 / ms, rel=0.02, abs=0.06)  # the img/s of that batch's median time
    assert re.search(r"latency [0-9.]+ ms", line), line
    row = next(line for line in out.splitlines() if line.startswith("│ exact"))
    assert f"{ips:.1f}" in row  # the table's throughput img/s, as the progress line says


def test_data_stats_never_cuts_the_ids_of_failed_frames(tmp_path, capsys, monkeypatch):
    from PIL import Image

    root = make_dataset(tmp_path / "rig", n=6, size=(16, 20), modalities=("rgb", "depth"))
    ids = [f"seqA_train_frame_{i:04d}" for i in range(6)]
    for folder in ("rgb", "depth", "label"):
        for i, sid in enumerate(ids):
            (root / folder / f"s{i:03d}.png").rename(root / folder / f"{sid}.png")
    (root / "splits" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    (root / "attributes.csv").unlink()
    for sid in ids[:3]:  # lens caps
        Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "rgb" / f"{sid}.png")
    monkeypatch.setenv("COLUMNS", "80")
    status, out, _ = run(["data", "stats", str(root), "--split", "train"], capsys)
    assert status == 0
    assert "…" not in out
    folded = "".join(re.sub(r"[│┃\s]", "", line) for line in out.split("frames that fail", 1)[1].splitlines())
    for sid in ids[:3]:
        assert sid in folded, out


def test_data_check_names_the_dataset_from_its_yaml_with_a_missing_split(tmp_path, capsys):
    root = make_dataset(tmp_path / "rig", n=4, size=(16, 20), modalities=("rgb", "depth"))
    status, _, err = run(["data", "check", str(root), "--split", "raw"], capsys)
    assert status == 2
    assert "1 problem(s) in dataset 'toy'" in err, err
    assert "splits/raw.txt: split file not found" in err


def test_predict_refuses_an_empty_sensor_path(tmp_path, capsys, model_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    status, _, err = run(["predict", str(model_file), "rgb=", "--out", str(tmp_path / "x" / "px")], capsys)
    assert status == 2
    assert "rgb=: empty path; give a file or a folder after the '='" in err, err
    assert "inside the input folder" not in err


def test_pseudo_label_names_the_labelled_flag_when_its_split_is_missing(tmp_path, capsys, model_file):
    root = make_dataset(tmp_path / "raw_only", n=3, size=(24, 32), modalities=("rgb", "depth"),
                        splits={"raw": ["s000", "s001", "s002"]})
    status, _, err = run(["pseudo-label", str(model_file), "--data", str(root), "--split", "raw", "--out",
                          str(tmp_path / "pl"), "--device", "cpu"], capsys)
    assert status == 2
    assert ("no labelled split 'train' (splits: raw); give the split the pseudo-labelled samples join with "
            "--labelled SPLIT, or --labelled none") in err, err


def test_pseudo_label_api_names_the_labelled_keyword_when_its_split_is_missing(tmp_path, model_file):
    from rgbx.engine.pseudo_label import pseudo_label

    root = make_dataset(tmp_path / "raw_only", n=3, size=(24, 32), modalities=("rgb", "depth"),
                        splits={"raw": ["s000", "s001", "s002"]})
    with pytest.raises(ConfigError, match=r"join with labelled='SPLIT', or labelled=None") as e:
        pseudo_label(model_file, root, "raw", tmp_path / "pl", device="cpu")
    assert "--labelled" not in str(e.value)


def test_data_check_notes_evaluation_samples_that_are_also_trained_on(tmp_path, capsys):
    ids = [f"s{i:03d}" for i in range(6)]
    clean = make_dataset(tmp_path / "clean", n=6, splits={"train": ids[:4], "val": ids[4:]})
    status, out, _ = run(["data", "check", str(clean)], capsys)
    assert status == 0 and "note:" not in out
    leaky = make_dataset(tmp_path / "leaky", n=6, splits={"train": ids[:4], "val": ids[3:]})
    status, out, _ = run(["data", "check", str(leaky)], capsys)
    assert status == 0 and ("note: split val shares 1 of its 3 samples with split train (s003): a model trained on "
                            "train is scored on samples it learned") in " ".join(out.split())
