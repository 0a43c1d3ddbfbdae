"""An exported .onnx file run as a model (rgbx.engine.onnx_model): the same logits and the same evaluation as the
PyTorch model it came from, in ONNX Runtime and (where installed) OpenVINO."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import sys

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rgbx.cli.main import main  # noqa: E402
from rgbx.engine.checkpoint import save_model  # noqa: E402
from rgbx.engine.export import export_onnx  # noqa: E402
from rgbx.engine.onnx_model import OnnxSegmentor  # noqa: E402
from rgbx.errors import CheckpointError, ConfigError, RgbxError  # noqa: E402
from rgbx.models import create_model  # noqa: E402
from tests.conftest import make_dataset  # noqa: E402

CLASSES = {"name": "toy", "classes": ["ground", "box", "person"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
           "ignore_index": 255}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth", "thermal"], num_classes=3,
                         head_channels=16).eval()
    folder = tmp_path_factory.mktemp("onnx_model")
    weights = save_model(folder / "model.safetensors", model, CLASSES)
    path = export_onnx(model, folder / "model.onnx", size=(32, 40), dataset=CLASSES, exporter="torchscript")
    return model, weights, path


def inputs(batch=2, h=32, w=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(batch, 3, h, w, generator=g), "depth": torch.randn(batch, 1, h, w, generator=g),
            "thermal": torch.randn(batch, 1, h, w, generator=g)}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_file_gives_the_models_logits_with_sensors_missing(exported, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    model, _, path = exported
    onnx = OnnxSegmentor(path, runtime, threads=1)
    assert onnx.modalities == ("rgb", "depth", "thermal") and onnx.num_classes == 3
    assert onnx.info["dataset"]["classes"] == CLASSES["classes"]
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(onnx(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)
        # thermal missing from the whole batch (fed as zeros, marked absent), depth absent for one sample
        present = {"rgb": torch.tensor([True, True]), "depth": torch.tensor([True, False])}
        view = {m: x[m] for m in ("rgb", "depth")}
        torch.testing.assert_close(onnx(view, present).logits, model(view, present).logits, atol=1e-4, rtol=1e-4)


def _openvino_bf16() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_runtime_precision_is_checked(exported, tmp_path, capsys):
    _, weights, path = exported
    with pytest.raises(ConfigError, match="only the openvino runtime computes in bf16"):
        OnnxSegmentor(path, "onnxruntime", precision="bf16")
    with pytest.raises(ConfigError, match="unknown runtime precision 'fp16'"):
        OnnxSegmentor(path, "openvino", precision="fp16")
    root = make_dataset(tmp_path / "d", n=2, size=(32, 40))
    assert main(["eval", str(weights), "--data", str(root), "--runtime-precision", "bf16"]) == 2
    assert "--runtime-precision sets the arithmetic of an exported .onnx file's runtime" in capsys.readouterr().err


@pytest.mark.skipif(not _openvino_bf16(), reason="needs openvino and a processor with bf16 instructions")
def test_openvino_bf16_is_the_fp32_function_within_bf16_rounding(exported):
    """bf16 keeps 8 bits of mantissa: the logits move by about 2^-8 of their size, so the argmax of a random model,
    whose logits nearly tie, changes on a few pixels; benchmarks/speed.md measures a trained model's agreement."""
    _, _, path = exported
    g = torch.Generator().manual_seed(1)
    x = {"rgb": torch.randn(2, 3, 64, 80, generator=g), "depth": torch.randn(2, 1, 64, 80, generator=g),
         "thermal": torch.randn(2, 1, 64, 80, generator=g)}
    present = {"rgb": torch.tensor([True, True]), "depth": torch.tensor([True, False]),
               "thermal": torch.tensor([False, True])}
    fp32 = OnnxSegmentor(path, "openvino", threads=1)
    bf16 = OnnxSegmentor(path, "openvino", threads=1, precision="bf16")
    exact, low = fp32(x, present).logits, bf16(x, present).logits
    assert bf16.info["precision"] == "bf16"
    difference, scale = (low - exact).abs().max().item(), exact.abs().max().item()
    assert 0 < difference < 0.1 * scale  # not the fp32 numbers, and close to them
    assert (low.argmax(1) == exact.argmax(1)).float().mean().item() > 0.9


def _signal_stack() -> tuple[int, int, int]:
    from rgbx.engine.onnx_model import _SignalStack

    now = _SignalStack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(now)) == 0
    return now.ss_sp or 0, now.ss_flags, now.ss_size


_TWO_MODELS = """
import faulthandler, os, signal, sys, time
faulthandler.enable()  # an alternate signal stack, as pytest has
from rgbx.engine.onnx_model import OnnxSegmentor
first = OnnxSegmentor(sys.argv[1], "openvino", threads=1)
second = OnnxSegmentor(sys.argv[1], "openvino", threads=1)
del first  # destroyed in the order they were made
del second
signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, as torch's DataLoader sets
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    time.sleep(0.05)
    os.waitpid(pid, 0)
print("alive")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or importlib.util.find_spec("openvino") is None,
                    reason="needs openvino on Linux")
def test_openvino_models_leave_the_signal_stack_as_it_was(exported):
    """OpenVINO's CPU plugin puts an alternate signal stack of its own on the compiling thread and restores the
    previous one when the model goes; two models destroyed in the order they were made left the thread on freed
    memory, and the next signal killed the process (SIGSEGV; a pytest worker died in a later test)."""
    import subprocess

    _, _, path = exported
    before = _signal_stack()
    models = [OnnxSegmentor(path, "openvino", threads=1) for _ in range(2)]
    assert _signal_stack() == before
    del models[0]
    models.clear()
    assert _signal_stack() == before
    done = subprocess.run([sys.executable, "-c", _TWO_MODELS, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "alive", (done.returncode, done.stderr[-2000:])


def test_eval_and_predict_take_the_exported_file(exported, tmp_path, capsys):
    _, weights, path = exported
    root = make_dataset(tmp_path / "d", n=4, size=(32, 40))
    reports = {name: tmp_path / f"{name}.json" for name in ("torch", "onnx")}
    assert main(["eval", str(weights), "--data", str(root), "--anymodal", "--json", str(reports["torch"])]) == 0
    assert main(["eval", str(path), "--data", str(root), "--anymodal", "--json", str(reports["onnx"])]) == 0
    torch_run, onnx_run = (json.loads(reports[n].read_text())["subsets"] for n in ("torch", "onnx"))
    assert len(onnx_run) == 7  # every non-empty subset of the three sensors
    for subset, groups in torch_run.items():
        assert onnx_run[subset]["all"]["pixels"] == groups["all"]["pixels"]
        assert onnx_run[subset]["all"]["miou"] == pytest.approx(groups["all"]["miou"], abs=2e-3), subset
    assert main(["predict", str(path), str(root), "--split", "val", "--limit", "2", "--out",
                 str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred" / "labels").glob("*.png"))) == 2
    capsys.readouterr()
    assert main(["eval", str(path), "--data", str(root), "--fast"]) == 2
    assert "drop --fast" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", str(root), "--zero-shot", str(tmp_path / "names.safetensors")]) == 2
    assert "--zero-shot needs the rgbx model file" in capsys.readouterr().err


def test_files_that_are_not_rgbx_exports_are_named(exported, tmp_path):
    import onnx

    _, _, path = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(CheckpointError, match="foreign.onnx: not an rgbx export"):
        OnnxSegmentor(tmp_path / "foreign.onnx")
    with pytest.raises(CheckpointError, match="not found"):
        OnnxSegmentor(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        OnnxSegmentor(path, "tensorrt")
    with pytest.raises(ConfigError, match="takes rgb, depth, thermal; got lidar"):
        OnnxSegmentor(path)({"lidar": torch.zeros(1, 1, 8, 8)})
    # the runtime's own failure (here: stage 1's 8×8 reduction, frozen in the graph, on a 4×4 map) names the file
    with pytest.raises(RgbxError, match=r"model.onnx failed in onnxruntime on inputs rgb \(1, 3, 16, 16\)"):
        OnnxSegmentor(path)({m: torch.zeros(1, c, 16, 16) for m, c in (("rgb", 3), ("depth", 1), ("thermal", 1))})


def test_the_exported_file_is_padded_with_its_networks_zero_under_the_cmx_rule(tmp_path):
    """CMX's evaluation pads after normalising; an exported converted CMX model applies its blue-first encoding
    inside the graph, so --scale-rule cmx reads that encoding from the file's config and pads as for the model."""
    from rgbx.engine.inference import SlidingWindow, predict_logits
    from rgbx.models.convert import reference_input_encoding

    encoding, _ = reference_input_encoding("cmx", ["rgb", "hha"])
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "hha"], num_classes=3,
                         head_channels=16, input_encoding=encoding).eval()
    path = export_onnx(model, tmp_path / "cmx.onnx", size=(32, 40), exporter="torchscript")
    g = torch.Generator().manual_seed(3)
    x = {"rgb": torch.randn(1, 3, 26, 34, generator=g), "hha": torch.randn(1, 3, 26, 34, generator=g)}
    window = SlidingWindow((32, 40))
    with torch.no_grad():
        want = predict_logits(model, x, scales=(0.75, 1.0), flip=True, window=window, scale_rule="cmx")
        got = predict_logits(OnnxSegmentor(path, threads=1), x, scales=(0.75, 1.0), flip=True, window=window,
                             scale_rule="cmx")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_command_lines_offer_the_runtimes_the_engine_runs():
    """The CLI names runtimes without importing the engine (``--help`` stays light): its lists must stay the
    engine's."""
    import argparse

    from rgbx.cli.main import build_parser
    from rgbx.engine.onnx_model import PRECISIONS, RUNTIME_VARIANTS, RUNTIMES

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    choices = {(name, opt): tuple(action.choices) for name, sub in commands.items() for action in sub._actions
               for opt in action.option_strings if opt in ("--runtime", "--runtime-precision", "--runtimes")}
    assert choices[("eval", "--runtime")] == choices[("predict", "--runtime")] == RUNTIMES
    assert choices[("eval", "--runtime-precision")] == PRECISIONS
    assert choices[("bench", "--runtimes")] == RUNTIME_VARIANTS
