"""Bad values on the command line (and given to the API calls behind it): one clear message naming the flag, file
or key and what was expected, exit status 2, never a traceback from deep inside torch, argparse or the file
system."""

from __future__ import annotations

import pytest
import torch

from rgbx.cli.main import main
from rgbx.device import device_available
from rgbx.engine.checkpoint import save_model
from rgbx.models import create_model
from tests.conftest import make_dataset


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).eval()
    save_model(root / "m.safetensors", model, {"classes": ["ground", "box", "person"]})
    make_dataset(root / "data", n=4, size=(24, 32), modalities=("rgb", "depth"))
    # recordings without labels beside labelled splits (the label optional): split raw = s003, unlabelled
    unlab = make_dataset(root / "unlab", n=4, size=(24, 32), modalities=("rgb", "depth"),
                         splits={"train": ["s000", "s001"], "val": ["s002"], "raw": ["s003"]})
    (unlab / "label" / "s003.png").unlink()
    with open(unlab / "dataset.yaml", "a") as f:
        f.write("label: {folder: label, optional: true}\n")
    (root / "a_file").write_text("not a folder")
    import numpy as np

    from rgbx.modalities import write_array

    write_array(root / "depth8.png", np.full((1, 24, 32), 90, np.uint8))  # relative depth, not millimetres
    (root / "cut.onnx").write_bytes(b"\x0a\xff\xff\xff\x0f")  # an export cut short: protobuf cannot decode it
    (root / "empty.onnx").write_bytes(b"")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, root / "release.pth")  # a research repo's checkpoint
    (root / "depth_renamed").mkdir()  # the rig's depth frames named after their sensor: no name shared with rgb/
    write_array(root / "depth_renamed" / "depth_s000.png", np.full((1, 24, 32), 900, np.uint16))
    return root


def run(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``rgbx argv``, argparse's own exits included."""
    try:
        status = main(argv)
    except SystemExit as e:  # argparse refuses a value before any command runs
        status = e.code
    return status, capsys.readouterr().err


CASES = [
    (["eval", "{m}", "--data", "{data}", "--scales", "0"], "argument --scales: expected a number > 0, got '0'"),
    (["eval", "{m}", "--data", "{data}", "--scales", "1", "-1"], "argument --scales: expected a number > 0"),
    (["eval", "{m}", "--data", "{data}", "--scales", "nan"], "argument --scales: expected a number > 0, got 'nan'"),
    (["eval", "{m}", "--data", "{data}", "--batch-size", "0"],
     "argument --batch-size: expected a whole number >= 1, got '0'"),
    (["eval", "{m}", "--data", "{data}", "--window", "0x10"],
     "argument --window: expected HxW with both at least 1, e.g. 240x320, got '0x10'"),
    (["eval", "{m}", "--data", "{data}", "--by", "weather"],
     "--by weather: no sample of {data} [val] has that attribute (attributes here: condition"),
    (["eval", "{m}", "--data", "{data}", "--device", "banana"], "device 'banana': expected auto, cpu, cuda or cuda:N"),
    (["predict", "{m}", "{data}", "--out", "{root}/p", "--device", "cuda:99"], "--device 'cuda:99': "),
    (["eval", "{m}", "--data", "{data}", "--confusion", "{a_file}/confusion"],
     "--confusion {a_file}/confusion: cannot be written, {a_file} is a file"),
    (["eval", "{m}", "--data", "{data}", "--confusion", "{a_file}"], "--confusion {a_file}: is a file; give a folder"),
    (["eval", "{m}", "--data", "{data}", "--json", "{root}"], "--json {root}: is a folder; give the name of the file"),
    (["eval", "{m}", "--data", "{data}", "--calibration", "--reliability", "{a_file}/r"],
     "--reliability {a_file}/r: cannot be written, {a_file} is a file"),
    (["predict", "{m}", "{data}", "--limit", "-1", "--out", "{root}/p"],
     "argument --limit: expected a whole number >= 0, got '-1'"),
    (["predict", "{m}", "{data}", "--out", "{root}/p", "--sensor-rule", "frozen_after=4"],
     "--sensor-rule sets a threshold of the sensor checks; add --check-sensors"),
    (["predict", "{m}", "{data}", "--out", "{root}/p", "--check-sensors", "--sensor-rule", "rgb.after=4"],
     "sensor rule 'rgb.after=4': unknown key 'after'; expected one of max_non_finite"),
    (["predict", "{m}", "{data}", "--out", "{root}/p", "--check-sensors", "--sensor-rule", "frozen_after=0"],
     "sensor rule 'frozen_after=0': frozen_after must be >= 1"),
    (["eval", "{m}", "--data", "{data}", "--failures", "blank"],
     "--failures chooses the silent failures of --robustness; add --robustness"),
    (["eval", "{m}", "--data", "{data}", "--sensor-rule", "frozen_after=2"],
     "--sensor-rule sets a threshold of the sensor checks; add --check-sensors"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--check-sensors"],
     "--robustness screens frames in its silent-failure section and scores the clean data as it is; drop "
     "--check-sensors"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--failures", "none", "blank"],
     "--failures none skips them all; give it alone"),
    (["eval", "{m}", "--data", "{data}", "--corruptions", "misalignment"],
     "--corruptions chooses the corruptions of --robustness; add --robustness"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--corruptions", "gaussian", "none"],
     "--corruptions none skips them all; give it alone"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--strengths", "misalignment=0.1,big"],
     "--strengths 'misalignment=0.1,big': expected NAME=V1,V2,... with numbers"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--strengths", "shake=0.1"],
     "unknown corruption 'shake'; registered: dropout, gaussian, salt_pepper, misalignment"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--strengths", "misalignment=0,0.1"],
     "strengths of misalignment: expected one or more positive numbers, got [0.0, 0.1]"),
    (["eval", "{m}", "--data", "{data}", "--robustness", "--corruptions", "gaussian", "--strengths",
      "misalignment=0.1"], "strengths given for misalignment, which is not scored here (corruptions: gaussian)"),
    (["eval", "{m}", "--data", "{data}", "--strengths", "misalignment=0.1"],
     "--strengths chooses the corruptions' strengths of --robustness; add --robustness"),
    (["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth", "--num-classes", "0"],
     "argument --num-classes: expected a whole number >= 1, got '0'"),
    (["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth", "--num-classes", "3",
      "--size", "0x10"], "argument --size: expected HxW with both at least 1"),
    (["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth", "--num-classes", "3",
      "--head-channels", "16", "--train-size", "32x32", "--train-batch", "1", "--what", "train", "--warmup", "0",
      "--repeats", "1", "--device", "cpu", "--options", "exact"],
     "every option set failed; exact: ValueError: Expected more than 1 value per channel when training"),
    (["export", "{m}", "--out", "{root}/m.onnx", "--opset", "3"], "opset 3: rgbx models need ONNX opset 14 or newer"),
    (["export", "{m}", "--out", "{a_file}/m.onnx"], "{a_file}/m.onnx: cannot write a file there"),
    (["export", "{m}", "--out", "{m}"], "--out {m} is the model file being exported; write the .onnx file beside it"),
    (["export", "{m}", "--out", "{a_file}"], "--out {a_file} exists and is not an .onnx file; it is not overwritten"),
    (["export", "{m}", "--out", "{root}"], "--out {root} is a folder; give the .onnx file to write"),
    (["train", "synth_cmx_b0", "data.crop_size=[64,96"], "override 'data.crop_size=[64,96': the value is not valid "
     "YAML (while parsing a flow sequence); check its brackets and quotes"),
    (["train", "synth_cmx_b0", "train.init_modality_from={{thermal:depth}}"],
     "override 'train.init_modality_from={{thermal:depth}}': YAML needs a space after ':' in a mapping"),
    (["train", "synth_cmx_b0", "data.photometric_ops={{rgb:[{{name:x}}]}}"],
     "override 'data.photometric_ops={{rgb:[{{name:x}}]}}': YAML needs a space after ':' in a mapping"),
    (["predict", "{m}", "rgb={data}/rgb/s000.png", "depth={root}/depth8.png", "--out", "{root}/p"],
     "{root}/depth8.png: uint8 values; 'depth' is read as its encoding (uint16 × 0.001 = m)"),
    (["predict", "{m}", "rgb={data}/rgb", "depth={root}/depth_renamed", "--out", "{root}/p"],
     "no file name is shared by the sensors' folders (rgb: s000, depth: depth_s000 ...): folders are matched by "
     "file name without extension"),
    (["predict", "{m}", "{data}", "--out", "{data}"], "--out {data} is the dataset folder {data}: predictions go to "
     "a folder of their own"),
    (["predict", "{m}", "{data}", "--out", "{data}/label/p"], "--out {data}/label/p is inside its folder {data}/label"),
    (["predict", "{m}", "rgb={data}/rgb", "--out", "{data}/rgb"], "--out {data}/rgb is inside the input folder "
     "{data}/rgb (rgb={data}/rgb)"),
    (["eval", "{root}/release.pth", "--data", "{data}"], "{root}/release.pth: a PyTorch checkpoint (torch.save), "
     "not an rgbx model file; convert a released checkpoint first: rgbx convert {root}/release.pth"),
    (["predict", "{root}", "{data}", "--out", "{root}/p"], "{root}: a folder, not a model file"),
    (["predict", "{m}", "{data}", "--out", "{a_file}"], "--out {a_file}: is a file; give a folder"),
    (["calibrate", "{m}", "--data", "{data}", "--out", "{root}"], "--out {root}: is a folder; give the name of the file"),
    (["train", "synth_cmx_b0", "data.root={data}", "output_dir={a_file}"],
     "output_dir {a_file}: is a file; the run's folder goes there"),
    (["convert", "{m}", "--out", "{root}/c.safetensors"], "{m}: already an rgbx model file; use it as it is"),
    (["eval", "{root}/cut.onnx", "--data", "{data}"], "{root}/cut.onnx: not a readable ONNX file (DecodeError: "),
    (["predict", "{root}/empty.onnx", "{data}", "--out", "{root}/p"],
     "{root}/empty.onnx: an ONNX file without a graph (0 bytes)"),
    (["data", "pack", "{data}", "{a_file}/shards"], "{a_file}/shards/shards: Not a directory"),
    # a split without labels where labels are needed: said before any work, not a torch error at the first step
    (["train", "synth_cmx_b0", "data.root={unlab}", "data.train_split=raw", "output_dir={root}/t",
      "model.modalities=[rgb,depth]"], "{unlab}: 1 of the 1 samples of split 'raw' have no label file (s003); "
     "training (data.train_split) needs labelled samples"),
    (["train", "synth_cmx_b0", "data.root={unlab}", "data.val_split=raw", "output_dir={root}/t",
      "model.modalities=[rgb,depth]"], "split 'raw' have no label file (s003); the evaluation during and after "
     "training (data.val_split) needs labelled samples"),
    (["eval", "{m}", "--data", "{unlab}", "--split", "raw"], "(s003); evaluation needs labelled samples"),
    (["calibrate", "{m}", "--data", "{unlab}", "--split", "raw"], "(s003); calibration needs labelled samples"),
    (["pseudo-label", "{m}", "--data", "{unlab}", "--split", "val", "--labelled", "raw", "--out", "{root}/pl"],
     "(s003); the labelled split that train_pseudo joins (--labelled; 'none' for no labelled split) needs labelled "
     "samples"),
    (["train", "synth_cmx_b0", "data.root={data}", "output_dir={root}/bn", "model.modalities=[rgb,depth]",
      "model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[32,32]", "train.batch_size=1",
      "train.iters=1", "data.num_workers=0", "train.eval_group_by=null"],
     "a BatchNorm layer of the model got a single value per channel to normalise (input of shape [1, "),
    (["train", "synth_cmx_b0", "optim.lr=-1"], "optim.lr must be > 0, got -1.0"),
    (["train", "synth_cmx_b0", "optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0, got -0.1"),
    (["train", "synth_cmx_b0", "optim.betas=[0.9,1.5]"], "optim.betas must be two numbers in [0, 1)"),
    (["convert", "{data}/rgb/s000.png", "--modalities", "rgb", "depth", "--out", "{root}/c.safetensors"],
     "{data}/rgb/s000.png: cannot read it as weights (torch.load(weights_only=True) refused it: "),
]


# a torch device type this machine lacks (where it has one, the device is used: nothing to refuse)
CASES += [(["eval", "{m}", "--data", "{data}", "--device", kind], f"--device '{kind}': this torch has no usable {kind} "
           f"device here") for kind in ("mps", "xpu") if not device_available(kind)]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_a_bad_value_is_one_clear_error(place, capsys, argv, message):
    names = {"m": place / "m.safetensors", "data": place / "data", "root": place, "a_file": place / "a_file",
             "unlab": place / "unlab"}
    status, err = run([a.format(**names) for a in argv], capsys)
    assert status == 2, err
    assert message.format(**names) in err
    assert "Traceback" not in err
    # torch's advice to load with weights_only=False is never passed on: rgbx does not unpickle code
    assert "weights_only` set to `False`" not in err


def test_export_prints_the_opset_it_wrote(place, capsys):
    onnx = pytest.importorskip("onnx")
    out = place / "opset14.onnx"
    assert main(["export", str(place / "m.safetensors"), "--out", str(out), "--opset", "14",
                 "--exporter", "torchscript"]) == 0
    assert "exporter: torch.onnx TorchScript, opset 14" in capsys.readouterr().out
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [14]


def test_load_model_names_a_bad_device(place):
    from rgbx.engine.checkpoint import load_model
    from rgbx.errors import ConfigError

    with pytest.raises(ConfigError, match="device 'banana': expected auto, cpu, cuda or cuda:N"):
        load_model(place / "m.safetensors", device="banana")
    # a device this machine lacks: refused by name before the model is built (was torch's error on the first tensor)
    lacking = [kind for kind in ("mps", "xpu") if not device_available(kind)]
    if not torch.cuda.is_available():
        lacking.append("cuda")
    for kind in lacking:
        with pytest.raises(ConfigError, match=f"device '{kind}': "):
            load_model(place / "m.safetensors", device=kind)
    model, _ = load_model(place / "m.safetensors", device="auto")  # auto: CUDA when there is one, as in the CLI
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_output_checks_let_an_existing_file_be_written_again(place, tmp_path, capsys):
    """The early output checks refuse only what cannot be written: a --json file from an earlier run is replaced."""
    out = tmp_path / "e.json"
    out.write_text("{}")
    argv = ["eval", str(place / "m.safetensors"), "--data", str(place / "data"), "--json", str(out)]
    assert run(argv, capsys)[0] == 0
    assert '"subsets"' in out.read_text()


def test_eval_with_modalities_reads_only_those(place, tmp_path, capsys):
    """`--modalities rgb` on a rig without the model's depth camera: scored on what it has (it was refused as
    'the dataset has no modality depth', against the help's own example)."""
    import json

    rig = make_dataset(tmp_path / "rgb_only", n=4, size=(24, 32), modalities=("rgb",))
    out = tmp_path / "e.json"
    assert main(["eval", str(place / "m.safetensors"), "--data", str(rig), "--modalities", "rgb", "--json",
                 str(out)]) == 0
    capsys.readouterr()
    assert list(json.loads(out.read_text())["subsets"]) == ["rgb"]
    status, err = run(["eval", str(place / "m.safetensors"), "--data", str(rig)], capsys)
    assert status == 2 and "the dataset has no modality 'depth'" in err  # without --modalities: every sensor
    assert "; score the model on the sensors the data has with --modalities rgb" in err
    # predict takes what the rig has, and now says so
    assert main(["predict", str(place / "m.safetensors"), str(rig), "--split", "val", "--out", str(tmp_path / "p"),
                 "--no-panels"]) == 0
    assert f"note: {rig} has no depth; predicting from rgb" in capsys.readouterr().out


def test_by_condition_asked_for_on_data_without_it_is_an_error(place, tmp_path, capsys):
    """The default grouping (condition) is left out where no sample has it; asked for, it is named as any other
    attribute (it printed the whole split alone, without a word)."""
    import shutil

    data = tmp_path / "no_attributes"
    shutil.copytree(place / "data", data)
    (data / "attributes.csv").unlink()
    assert main(["eval", str(place / "m.safetensors"), "--data", str(data)]) == 0
    status, err = run(["eval", str(place / "m.safetensors"), "--data", str(data), "--by", "condition"], capsys)
    assert status == 2 and f"--by condition: no sample of {data} [val] has that attribute (attributes here: none" in err


def test_predict_into_a_folder_with_earlier_predictions(place, tmp_path, capsys):
    """A second `rgbx predict` into the same --out left the first run's predictions for frames it did not predict
    beside its own, without a word: it is refused, and --overwrite removes only what predict wrote."""
    out = tmp_path / "p"
    model, data = str(place / "m.safetensors"), str(place / "data")
    assert main(["predict", model, data, "--split", "train", "--out", str(out)]) == 0  # s000, s001
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    (out / "labels" / "keep.txt").write_text("mine too")
    status, err = run(["predict", model, data, "--split", "val", "--out", str(out)], capsys)
    assert status == 2
    assert f"--out {out} already holds 6 prediction file(s) of an earlier run (color/, labels/, panels/); pass " \
           "--overwrite to replace them" in err
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["keep.txt", "s000.png", "s001.png"]
    assert main(["predict", model, data, "--split", "val", "--out", str(out), "--overwrite", "--no-panels"]) == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["keep.txt", "s002.png", "s003.png"]
    assert not list((out / "panels").iterdir())
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["eval", "predict", "calibrate"])
def test_threads_of_the_inference_commands_hold_for_the_command(place, tmp_path, monkeypatch, command):
    """`--threads N` (as train.threads and rgbx bench --threads) for eval / predict / calibrate, set for the command
    and given back after it (a shared CPU: fewer threads than cores can be faster)."""
    before = torch.get_num_threads()
    calls = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or set_threads(n))
    model, data = str(place / "m.safetensors"), str(place / "data")
    argv = {"eval": ["eval", model, "--data", data],
            "predict": ["predict", model, data, "--split", "val", "--out", str(tmp_path / "p"), "--no-panels"],
            "calibrate": ["calibrate", model, "--data", data, "--out", str(tmp_path / "c.safetensors")]}[command]
    assert main([*argv, "--threads", str(before + 1)]) == 0
    assert calls == [before + 1, before] and torch.get_num_threads() == before
