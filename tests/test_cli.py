"""The command line, end to end: synth → train → eval → predict, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rgbx.cli.main import main
from rgbx.engine.host_memory import glibc_malloc_available, keeps_host_memory, set_keep_host_memory
from rgbx.modalities import write_array
from tests.conftest import make_dataset

TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.num_workers=0", "train.batch_size=2",
        "train.eval_batch_size=2", "train.log_every=1", "optim.warmup_iters=1"]


def run_cli(*args):
    return main([str(a) for a in args])


def test_help_everywhere(capsys):
    for cmd in ("synth", "train", "eval", "calibrate", "predict", "demo", "info", "data", "profile", "export"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_info_lists_registries(capsys):
    assert run_cli("info") == 0
    out = capsys.readouterr().out
    for word in ("rgb", "thermal", "lidar", "event", "mit_b0", "cmx", "mean", "mlp", "supervised", "ohem",
                 "nyu_cmx_b2"):
        assert word in out
    from rgbx.models.convert import REFERENCE_EVALUATION

    listed = out.split("published evaluations")[1].split("):", 1)[1].split("\nplugins")[0]  # wrapped where long
    assert sorted(name.strip() for name in listed.split(",")) == sorted(REFERENCE_EVALUATION)
    # piped (not a terminal): wide enough that no header or short value is cut ("descripti…" at 80 columns)
    assert "photometric augmentation" in out and "description" in out and "…" not in out
    assert "plugins (--import, the config's imports, installed entry points rgbx.plugins): none loaded" in out


@pytest.mark.slow
def test_synth_train_eval_predict(tmp_path, capsys):
    data, run = tmp_path / "synth", tmp_path / "run"
    assert run_cli("synth", data, "--train", 6, "--val", 4, "--test", 2, "--size", "48x64", "--workers", 1) == 0
    assert run_cli("data", "check", data) == 0
    assert "OK" in capsys.readouterr().out
    assert run_cli("train", "synth_cmx_b0", f"data.root={data}", f"output_dir={run}", *TINY,
                   "data.crop_size=[48,64]", "train.iters=3", "train.eval_every=0") == 0
    weights = run / "model.safetensors"
    assert weights.is_file()
    report = tmp_path / "eval.json"
    assert run_cli("eval", weights, "--data", data, "--split", "test", "--anymodal", "--json", report) == 0
    out = capsys.readouterr().out
    results = json.loads(report.read_text())
    assert set(results["subsets"]) == {"rgb+depth+thermal", "rgb+depth", "rgb+thermal", "depth+thermal", "rgb",
                                       "depth", "thermal"}
    assert "rgb+depth+thermal" in out and results["miou_convention"] == "present"
    preds = tmp_path / "preds"
    assert run_cli("predict", weights, data, "--split", "test", "--out", preds) == 0
    panels = sorted((preds / "panels").glob("*.png"))
    assert len(panels) == 2 and len(list((preds / "labels").glob("*.png"))) == 2
    label = np.asarray(Image.open(next((preds / "labels").glob("*.png"))))
    assert label.shape == (48, 64) and label.max() < 12
    # loose files, a subset of the sensors (no thermal)
    sid = (data / "splits" / "test.txt").read_text().split()[0]
    assert run_cli("predict", weights, f"rgb={data / 'rgb' / (sid + '.png')}",
                   f"depth={data / 'depth' / (sid + '.png')}", "--out", tmp_path / "p2") == 0
    assert (tmp_path / "p2" / "panels" / f"{sid}.png").is_file()
    # the fast path (bf16 where the CPU has bf16 units, fused attention, channels-last): nearly the same answers
    fast = tmp_path / "eval_fast.json"
    assert run_cli("eval", weights, "--data", data, "--split", "test", "--anymodal", "--json", fast, "--fast") == 0
    fast_results = json.loads(fast.read_text())
    assert fast_results["speed"].startswith(("bf16 sdpa", "fp32 sdpa")) and results["speed"] == "model's own fp32"
    for subset, groups in results["subsets"].items():
        a, b = groups["all"], fast_results["subsets"][subset]["all"]
        assert a["pixels"] == b["pixels"] and abs(a["pixel_accuracy"] - b["pixel_accuracy"]) < 0.03, subset
    assert run_cli("predict", weights, data, "--split", "test", "--out", tmp_path / "p3", "--fast") == 0
    for exact_png in (preds / "labels").glob("*.png"):
        exact = np.asarray(Image.open(exact_png))
        quick = np.asarray(Image.open(tmp_path / "p3" / "labels" / exact_png.name))
        assert (exact == quick).mean() > 0.97


def _error(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("rgbx ") and "error:" in err
    return err


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    root = make_dataset(tmp_path / "d")
    run = tmp_path / "run"
    common = [f"data.root={root}", f"output_dir={run}", *TINY, "data.crop_size=[16,16]",
              "model.modalities=[rgb,depth,thermal]"]
    assert "trian" in _error(capsys, "train", "synth_cmx_b0", *common, "trian.iters=3")
    assert run_cli("train", "synth_cmx_b0", *common, "train.iters=2", "--quiet") == 0
    weights = run / "model.safetensors"
    before = weights.read_bytes()

    # a checkpoint for a different model (3 classes) evaluated on a dataset with other classes
    other = make_dataset(tmp_path / "other", modalities=("rgb", "depth", "thermal"))
    (other / "dataset.yaml").write_text((other / "dataset.yaml").read_text().replace("- person", "- person\n- car")
                                        .replace("- - 220\n  - 20\n  - 60", "- - 220\n  - 20\n  - 60\n- - 0\n  - 0\n  - 142"))
    assert "3 classes" in _error(capsys, "eval", weights, "--data", other)

    # training over an existing run is refused, nothing is overwritten
    assert "--resume" in _error(capsys, "train", "synth_cmx_b0", *common, "train.iters=2")
    assert weights.read_bytes() == before

    # bad data: each problem named
    import shutil

    shutil.rmtree(root / "thermal")
    assert "thermal" in _error(capsys, "data", "check", root)
    root = make_dataset(tmp_path / "d2")
    write_array(root / "depth" / "s000.png", np.zeros((1, 8, 8), np.uint16))
    assert "depth/s000.png" in _error(capsys, "data", "check", root)
    (root / "rgb" / "s001.png").write_bytes(b"corrupt")
    assert "rgb/s001.png" in _error(capsys, "data", "check", root)

    # a loose input with the wrong channel count
    rgb_as_depth = tmp_path / "d.png"
    write_array(rgb_as_depth, np.zeros((3, 16, 20), np.uint8))
    err = _error(capsys, "predict", weights, f"depth={rgb_as_depth}", "--out", tmp_path / "p")
    assert "d.png" in err and "expected 1" in err
    # a file whose header reads but whose data is cut short fails inside a loader process: still one clear line
    root3 = make_dataset(tmp_path / "d3", n=6)
    png = (root3 / "rgb" / "s005.png").read_bytes()
    (root3 / "rgb" / "s005.png").write_bytes(png[: len(png) // 2])
    err = _error(capsys, "predict", weights, root3, "--split", "val", "--out", tmp_path / "p3", "--workers", "1")
    assert "s005.png" in err and "truncated" in err and "worker" not in err
    err = _error(capsys, "train", "synth_cmx_b0", f"data.root={root3}", f"output_dir={tmp_path / 'r3'}", *TINY[:2],
                 "data.num_workers=1", "train.batch_size=2", "train.iters=8", "model.modalities=[rgb,depth,thermal]",
                 "data.crop_size=[16,16]", "--quiet")
    assert "s005.png" in err and "worker" not in err
    # a corrupt checkpoint
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"xx")
    assert "bad.safetensors" in _error(capsys, "eval", bad, "--data", root)
    assert weights.read_bytes() == before


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "rgbx.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("rgbx ")


@pytest.mark.slow
def test_demo_runs_end_to_end_on_tiny_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--out", out, "--train", 8, "--val", 6, "--size", "48x64", "--iters", 3, "--panels", 2,
                   "train.batch_size=2", "model.backbone=mit_nano", "data.num_workers=0") == 0
    text = capsys.readouterr().out
    assert "anymodal" in text and "rgb+depth+thermal" in text
    assert (out / "run" / "model.safetensors").is_file()
    assert len(list((out / "predictions" / "panels").glob("*.png"))) == 2
    assert "| rgb |" in (out / "results.md").read_text()


def test_eval_and_predict_with_sliding_windows(tmp_path, capsys):
    ids = [f"s{i:03d}" for i in range(4)]
    root = make_dataset(tmp_path / "d", n=4, size=(32, 40), splits={"train": ids, "val": ids})
    run = tmp_path / "run"
    assert run_cli("train", "synth_cmx_b0", f"data.root={root}", f"output_dir={run}", *TINY,
                   "data.crop_size=[32,40]", "model.modalities=[rgb,depth,thermal]", "train.iters=2", "--quiet") == 0
    weights = run / "model.safetensors"
    reports = {}
    set_keep_host_memory(False)  # eval and predict keep freed host memory on the CPU, --fast or not (same values)
    assert run_cli("eval", weights, "--data", root) == 0
    assert keeps_host_memory() or not glibc_malloc_available()
    set_keep_host_memory(False)
    assert run_cli("predict", weights, root, "--split", "val", "--out", tmp_path / "kept", "--no-panels") == 0
    assert keeps_host_memory() or not glibc_malloc_available()
    assert run_cli("eval", weights, "--data", root, "--no-keep-host-memory", "--fast") == 0  # asked: off, --fast too
    assert not keeps_host_memory()
    for name, flags in {"whole": [], "covering": ["--window", "64x64"],
                        "sliding": ["--window", "16x24", "--stride", "8x8"],
                        "one_at_a_time": ["--window", "16x24", "--stride", "8x8", "--window-batch", "1"]}.items():
        reports[name] = tmp_path / f"{name}.json"
        assert run_cli("eval", weights, "--data", root, "--json", reports[name], *flags) == 0
    capsys.readouterr()
    whole, covering, sliding, single = (json.loads(reports[n].read_text())
                                        for n in ("whole", "covering", "sliding", "one_at_a_time"))
    assert single["subsets"] == sliding["subsets"]  # windows run together or one at a time: the same predictions
    assert whole["test_time"] == {"scales": [1.0], "flip": False, "scale_rule": "rgbx", "window": None,
                                  "stride": None}
    assert sliding["test_time"]["window"] == [16, 24] and sliding["test_time"]["stride"] == [8, 8]
    assert covering["test_time"]["stride"] == [43, 43]  # two thirds of the window, rounded up
    key = "rgb+depth+thermal"
    assert covering["subsets"][key] == whole["subsets"][key]  # one window covering each image: the plain pass
    assert sliding["subsets"][key]["all"]["pixels"] == whole["subsets"][key]["all"]["pixels"]
    confusion = tmp_path / "confusion"
    assert run_cli("eval", weights, "--data", root, "--modalities", "rgb", "depth", "--confusion", confusion,
                   "--json", tmp_path / "two.json") == 0
    assert "largest confusions, rgb+depth" in capsys.readouterr().out
    assert sorted(f.name for f in confusion.iterdir()) == ["rgb+depth.csv", "rgb+depth.png"]
    counts = [[int(v) for v in line.split(",")[1:]] for line in (confusion / "rgb+depth.csv").read_text().splitlines()[1:]]
    two = json.loads((tmp_path / "two.json").read_text())["subsets"]["rgb+depth"]["all"]
    assert len(counts) == 3 and sum(map(sum, counts)) == two["pixels"]
    assert sum(counts[i][i] for i in range(3)) / two["pixels"] == pytest.approx(two["pixel_accuracy"])
    assert "drop --robustness" in _error(capsys, "eval", weights, "--data", root, "--robustness", "--confusion",
                                         confusion)
    dformer = tmp_path / "dformer.json"  # DFormer's multi-scale rule: 32×40 at 0.75 becomes 32×32 (rgbx: 24×30)
    assert run_cli("eval", weights, "--data", root, "--scales", "0.75", "1", "--flip", "--scale-rule", "dformer",
                   "--json", dformer) == 0
    assert json.loads(dformer.read_text())["test_time"]["scale_rule"] == "dformer"
    cmx = tmp_path / "cmx.json"  # CMX's evaluator: 0.75 padded to the 32×40 crop, 1.25 (40×50) by its windows
    assert run_cli("eval", weights, "--data", root, "--scales", "0.75", "1", "1.25", "--flip", "--scale-rule", "cmx",
                   "--window", "32x40", "--json", cmx) == 0
    assert json.loads(cmx.read_text())["test_time"]["scale_rule"] == "cmx"
    assert "--scale-rule cmx needs --window HxW" in _error(capsys, "predict", weights, root, "--out", tmp_path / "c",
                                                           "--scales", "0.75", "1", "--scale-rule", "cmx")
    robust = tmp_path / "robust.json"
    assert run_cli("eval", weights, "--data", root, "--robustness", "--window", "16x24", "--json", robust) == 0
    assert json.loads(robust.read_text())["test_time"]["window"] == [16, 24]
    assert run_cli("predict", weights, root, "--split", "val", "--out", tmp_path / "p", "--window", "16x16",
                   "--no-panels") == 0
    labels = sorted((tmp_path / "p" / "labels").glob("*.png"))
    assert len(labels) == 4 and np.asarray(Image.open(labels[0])).shape == (32, 40)
    assert "--stride goes with --window" in _error(capsys, "eval", weights, "--data", root, "--stride", "8x8")
    assert "--window-batch goes with --window" in _error(capsys, "eval", weights, "--data", root,
                                                         "--window-batch", "4")
    with pytest.raises(SystemExit):
        run_cli("eval", weights, "--data", root, "--window", "16x16", "--window-batch", "0")
    assert "argument --window-batch: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert "exceeds the window" in _error(capsys, "predict", weights, root, "--out", tmp_path / "q",
                                          "--window", "8x8", "--stride", "16x8")
    with pytest.raises(SystemExit):
        run_cli("eval", weights, "--data", root, "--window", "big")
    assert "--window: expected HxW" in capsys.readouterr().err


def test_info_describes_a_model_file_and_a_foreign_checkpoint(tmp_path, capsys):
    import torch

    from rgbx.models import create_model
    from rgbx.models.model_file import save_model
    from tests.models.test_convert import random_state

    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "thermal"], num_classes=3,
                         head_channels=16)
    path = save_model(tmp_path / "m.safetensors", model,
                      {"name": "toy", "classes": ["ground", "box", "person"], "palette": [], "ignore_index": 255},
                      iteration=40, val_miou=0.5)
    assert run_cli("info", path) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"model: cmx/mit_nano over rgb+thermal with 3 classes; mlp head (16 channels); {params:.2f} M" in out
    assert "classes of toy (3): ground, box, person; ignore index 255" in out
    assert "history: iteration 40, validation mIoU 50.00" in out
    assert "input encoding" not in out

    encoded = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "thermal"], num_classes=3,
                           head_channels=16, input_encoding={"thermal": {"mean": [0.4], "std": [0.2]}})
    assert run_cli("info", save_model(tmp_path / "e.safetensors", encoded)) == 0
    assert "  thermal: (x − [0.4]) / [0.2], x in relative temperature 0-1" in capsys.readouterr().out

    # a file whose tensors do not fit its own config is an error, not a description
    tensors = dict(model.state_dict())
    tensors.pop("head.classifier.bias")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "broken.safetensors"), metadata)
    assert run_cli("info", tmp_path / "broken.safetensors") != 0
    assert "missing: head.classifier.bias" in capsys.readouterr().err

    torch.save({"model": random_state("cmx_mit_b0")}, tmp_path / "cmx.pth")
    assert run_cli("info", tmp_path / "cmx.pth") == 0
    out = capsys.readouterr().out
    assert "not an rgbx model file" in out and "layout: cmx; read off the checkpoint: " in out
    assert "backbone mit_b0" in out and "num_classes 40" in out and "convert it: rgbx convert" in out

    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    assert run_cli("info", tmp_path / "other.pth") != 0
    assert "cannot tell the checkpoint's layout" in capsys.readouterr().err


_UNDER_START_METHOD = """
import multiprocessing, sys
if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    from rgbx.cli.main import main
    data, out = sys.argv[2:]
    assert main(["train", "synth_cmx_b0", f"data.root={data}", f"output_dir={out}", "model.backbone=mit_nano",
                 "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=1", "train.batch_size=2",
                 "train.eval_batch_size=2", "train.iters=2", "train.eval_every=2", "train.threads=1",
                 "model.modalities=[rgb,depth]", "train.eval_group_by=null"]) == 0
    assert main(["eval", f"{out}/model.safetensors", "--data", data, "--workers", "1", "--json", f"{out}/e.json"]) == 0
"""


def test_train_and_eval_with_loader_workers_started_by_forkserver(tmp_path):
    """DataLoader workers started by forkserver (Linux's default from Python 3.14) or spawn (macOS, Windows) get the
    dataset, transforms and collate function pickled, not inherited: everything the loaders carry must pickle."""
    data = make_dataset(tmp_path / "d", n=6, modalities=("rgb", "depth"))
    script = tmp_path / "run.py"
    script.write_text(_UNDER_START_METHOD)
    done = subprocess.run([sys.executable, str(script), "forkserver", str(data), str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "e.json").read_text())["subsets"]
