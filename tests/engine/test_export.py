"""ONNX export: onnxruntime matches PyTorch at unseen batch sizes / H×W, with sensors absent; metadata; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from rgbx.cli.main import main  # noqa: E402
from rgbx.engine.checkpoint import save_model  # noqa: E402
from rgbx.engine.export import export_onnx, read_onnx_metadata, verify_onnx  # noqa: E402
from rgbx.models import create_model  # noqa: E402

TOL = 1e-4
DATASET = {"name": "tiny", "classes": ["floor", "wall", "chair"], "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
           "ignore_index": 255}


def tiny(fusion: str):
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion=fusion, modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16, pretrained="")
    return model.eval()


@pytest.fixture(scope="module", params=["cmx", pytest.param("mean", marks=pytest.mark.slow)])  # mean: dynamo, ~15 s
def exported(request, tmp_path_factory):
    model = tiny(request.param)
    path = export_onnx(model, tmp_path_factory.mktemp(request.param) / "model.onnx", size=(64, 64),
                       dataset=DATASET)
    return model, path


def random_inputs(batch: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(batch, 3, h, w, generator=g), "depth": torch.randn(batch, 1, h, w, generator=g)}


@pytest.mark.parametrize("batch,h,w", [(2, 64, 64), (3, 48, 80)])
def test_onnxruntime_matches_pytorch(exported, batch, h, w):
    model, path = exported
    inputs = random_inputs(batch, h, w)
    assert verify_onnx(path, model, inputs) <= TOL
    present = torch.ones(batch, 2, dtype=torch.bool)
    present[1, 1] = False  # depth absent for one sample
    assert verify_onnx(path, model, inputs, present) <= TOL
    # depth absent for the whole batch: PyTorch skips the branch, the graph computes it and masks it out
    assert verify_onnx(path, model, inputs, {"depth": torch.zeros(batch, dtype=torch.bool)}) <= TOL
    present[0, 0] = False  # rgb also absent for sample 0 (that sample only has depth)
    assert verify_onnx(path, model, inputs, present) <= TOL


def test_absent_input_is_ignored(exported):
    """What an absent modality holds does not change the logits (deployments may feed anything there)."""
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = random_inputs(2, 64, 96)
    present = torch.tensor([[True, False], [True, True]])
    feed = {m: x.numpy() for m, x in inputs.items()} | {"present": present.numpy()}
    a = session.run(["logits"], feed)[0]
    feed["depth"] = feed["depth"].copy()
    feed["depth"][0] = 1e4
    b = session.run(["logits"], feed)[0]
    assert (a[0] == b[0]).all()
    assert not (a[1] == b[1] + 1).all()  # sanity: outputs are real numbers


def test_inputs_outputs_and_metadata(exported):
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["rgb", "depth", "present"]
    assert inputs["present"].type == "tensor(bool)"
    assert inputs["rgb"].shape[1] == 3 and inputs["depth"].shape[1] == 1
    assert all(isinstance(d, str) for d in (inputs["rgb"].shape[0], inputs["rgb"].shape[2], inputs["rgb"].shape[3]))
    assert [o.name for o in session.get_outputs()] == ["logits"]

    meta = read_onnx_metadata(path)
    assert meta["format"] == "rgbx-onnx/1"
    assert meta["modalities"] == ["rgb", "depth"]
    assert meta["classes"] == DATASET["classes"] and meta["palette"] == DATASET["palette"]
    assert meta["model_config"]["fusion"] == model.config.fusion
    assert meta["model_config"]["num_classes"] == 3
    assert meta["normalization"]["rgb"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["normalization"]["depth"]["scale"] == pytest.approx(0.001)
    raw = session.get_modelmeta().custom_metadata_map
    assert json.loads(raw["modalities"]) == ["rgb", "depth"]
    assert meta["fold_head"] is True
    assert not list(path.parent.glob("*.data"))  # a single file, no external weights


def test_rgbx_info_describes_an_exported_file(exported, tmp_path, capsys):
    model, path = exported
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{model.config.fusion}/mit_nano over rgb+depth with 3 classes" in out
    assert "input rgb: (B, 3, H, W) float32, normalised; from file values: (value × 0.00392157 − [0.485, 0.456, " \
           "0.406]) / [0.229, 0.224, 0.225], absent: 0.0" in out
    assert "input depth: (B, 1, H, W)" in out and "output logits: (B, 3, H, W)" in out
    assert "classes (3): floor, wall, chair; ignore index 255" in out
    assert f"score or run it: rgbx eval {path} --data DIR" in out
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert main(["info", str(tmp_path / "bad.onnx")]) != 0
    assert "bad.onnx: not a readable ONNX file" in capsys.readouterr().err


def test_export_leaves_model_unchanged(tmp_path):
    model = tiny("cmx")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", size=(32, 32), exporter="torchscript")
    assert "computed" not in vars(model.encoder) and not model.head.fold
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    from rgbx.models import layers
    from rgbx.models.heads import mlp

    assert mlp.resize is layers.resize


def test_cli_export_check(tmp_path, capsys):
    ckpt = save_model(tmp_path / "model.safetensors", tiny("cmx"), DATASET)
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--size", "64x64", "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "max abs difference" in text
    diff = float(text.split("max abs difference")[1].split()[0])
    assert diff <= TOL
    assert read_onnx_metadata(out)["classes"] == DATASET["classes"]


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_missing_onnxruntime_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import sys

    from rgbx.engine.export import require
    from rgbx.errors import RgbxError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(RgbxError, match=r"pip install 'rgbx\[export\]'"):
        require("onnxruntime")
    ckpt = save_model(tmp_path / "model.safetensors", tiny("mean"), DATASET)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--check"]) == 2
    assert "rgbx[export]" in capsys.readouterr().err


def test_the_head_is_exported_folded_unless_asked_otherwise(tmp_path):
    """Folded (default), the fusion conv over the 4 concatenated stage maps (16 × 64 here) is gone from the file:
    the exporter multiplied each stage's Linear with its slice once (constant folding). Both files give the model's
    logits."""
    import onnx

    model = tiny("cmx")
    inputs = random_inputs(2, 32, 32)
    shapes = {}
    for fold in (True, False):
        path = export_onnx(model, tmp_path / f"{fold}.onnx", size=(32, 32), exporter="torchscript", fold_head=fold)
        assert read_onnx_metadata(path)["fold_head"] is fold
        assert verify_onnx(path, model, inputs) <= TOL
        shapes[fold] = [tuple(t.dims) for t in onnx.load(str(path)).graph.initializer]
    assert (16, 64, 1, 1) in shapes[False] and (16, 64, 1, 1) not in shapes[True]


def test_dformer_exports_right_at_every_size(tmp_path):
    """DFormer's window attention pools to 7×7 from a map whose size follows the input. The exporters' own adaptive
    pooling is right only at the traced size (the dynamo exporter's was off by up to 0.97 elsewhere and, from maps
    smaller than 7×7, failed in onnxruntime), so export swaps in two products with matrices computed from the size
    (``adaptive_avg_pool_by_matmul``): onnxruntime then agrees with PyTorch at other batch sizes and sizes, also where
    stage 4 is smaller than the window and with the depth map absent for one sample."""
    torch.manual_seed(0)
    model = create_model(backbone="dformer_nano", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=3, head_channels=16)
    with torch.no_grad():  # layer scales start at 1e-6 (blocks ≈ identity): make the blocks matter
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.fill_(1.0)
    model.eval()
    path = export_onnx(model, tmp_path / "dformer.onnx", size=(64, 96))
    assert read_onnx_metadata(path)["exporter"] == "torch.onnx TorchScript"  # nothing left that needs dynamo
    gen = torch.Generator().manual_seed(1)
    for batch, h, w in [(2, 64, 96), (3, 96, 128), (1, 160, 224), (2, 72, 88)]:
        inputs = {"rgb": torch.randn(batch, 3, h, w, generator=gen), "depth": torch.randn(batch, 1, h, w, generator=gen)}
        present = {"depth": torch.tensor([False] + [True] * (batch - 1))}
        with torch.no_grad():
            scale = model(inputs).logits.abs().max().item()
        assert scale > 0.05
        for masks in (None, present):
            assert verify_onnx(path, model, inputs, masks) <= 1e-5 * scale, (batch, h, w, masks)


@pytest.mark.slow  # the dynamo exporter: ~25 s
def test_ktb_exports_right_at_every_size(tmp_path):
    """KTB's sparse cross-modal fusion pools the keys to ``min(H, 16) × min(W, 16)`` and keeps the top half of
    them: sizes the TorchScript tracer freezes. The file it writes runs at other sizes but gives other logits, so
    ``auto`` compares it with PyTorch at another size, finds the difference and exports with dynamo, whose sizes
    stay symbolic (the pooling as matrix products built from them): onnxruntime then agrees at every size."""
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="ktb", head="mlp", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16)
    with torch.no_grad():  # DSCF's output convolutions start at zero: make the cross-modal path matter
        for name, p in model.named_parameters():
            if ".out." in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    model.eval()
    path = export_onnx(model, tmp_path / "ktb.onnx", size=(64, 96))
    assert read_onnx_metadata(path)["exporter"] == "torch.onnx dynamo"
    gen = torch.Generator().manual_seed(1)
    for batch, h, w in [(3, 96, 128), (2, 256, 320), (1, 32, 32)]:
        inputs = {"rgb": torch.randn(batch, 3, h, w, generator=gen), "depth": torch.randn(batch, 1, h, w, generator=gen)}
        with torch.no_grad():
            scale = model(inputs).logits.abs().max().item()
        present = {"depth": torch.tensor([False] + [True] * (batch - 1))}
        assert verify_onnx(path, model, inputs, present) <= 1e-5 * scale, (batch, h, w)


def test_auto_export_checks_a_smaller_size_too(tmp_path):
    """A fresh KTB model (DSCF's output convolutions at zero): its TorchScript file agrees with PyTorch at a larger
    size, since the cross-modal path adds nothing yet, but the top-k it froze at the traced key count fails at a
    smaller one. The auto export's check runs both sizes, so such a file is not kept."""
    from rgbx.engine.export import ExportWrapper, _agrees_at_other_shapes

    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="ktb", head="mlp", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).eval()
    path = export_onnx(model, tmp_path / "ktb.onnx", size=(64, 96), exporter="torchscript")
    gen = torch.Generator().manual_seed(1)
    larger = {"rgb": torch.randn(3, 3, 80, 128, generator=gen), "depth": torch.randn(3, 1, 80, 128, generator=gen)}
    assert verify_onnx(path, model, larger) <= 1e-5  # the larger size alone would keep the file
    smaller = {"rgb": torch.randn(3, 3, 32, 48, generator=gen), "depth": torch.randn(3, 1, 32, 48, generator=gen)}
    with pytest.raises(Exception, match="TopK"):
        verify_onnx(path, model, smaller)
    assert not _agrees_at_other_shapes(str(path), ExportWrapper(model).eval(), 2, 64, 96)


def test_adaptive_pooling_by_matmul_is_torchs():
    from rgbx.models.layers import adaptive_avg_pool_by_matmul

    gen = torch.Generator().manual_seed(0)
    for h, w in [(30, 40), (10, 14), (7, 7), (5, 7), (4, 5), (1, 3), (38, 56)]:
        x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(adaptive_avg_pool_by_matmul(x, (7, 7)),
                                   torch.nn.functional.adaptive_avg_pool2d(x, (7, 7)), rtol=1e-12, atol=1e-12)


def test_traceable_restores_resize_in_every_module():
    """traceable() swaps rgbx's resize for a traceable one in every rgbx.models module, rgbx.models.layers itself
    included, and puts the original back everywhere (restoring from layers.resize once put the swapped function
    back into the modules restored after layers, for the rest of the process)."""
    import sys

    from rgbx.engine.export import traceable
    from rgbx.models import create_model, layers

    original = layers.resize
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16)
    users = [name for name, m in sys.modules.items() if name.startswith("rgbx.models") and m is not None
             and getattr(m, "resize", None) is original]
    assert "rgbx.models.layers" in users and len(users) >= 3
    pool = layers.adaptive_avg_pool
    pool_users = [name for name, m in sys.modules.items() if name.startswith("rgbx.models") and m is not None
                  and getattr(m, "adaptive_avg_pool", None) is pool]
    assert {"rgbx.models.layers", "rgbx.models.backbones.dformer"} <= set(pool_users)
    with traceable(model):
        assert all(sys.modules[name].resize is not original for name in users)
        assert all(sys.modules[name].adaptive_avg_pool is layers.adaptive_avg_pool_by_matmul for name in pool_users)
    assert all(sys.modules[name].resize is original for name in users)
    assert all(sys.modules[name].adaptive_avg_pool is pool for name in pool_users)


def test_a_model_with_an_input_encoding_exports_it_inside_the_graph(tmp_path):
    """A converted CMX RGB-T model (blue-first RGB, thermal merged to three ImageNet-normalised channels) exports
    with rgbx's inputs: the file takes the 1-channel thermal sensor, normalised as rgbx normalises it, and computes
    what PyTorch computes, with the thermal camera absent for one sample too."""
    from rgbx.models.convert import reference_input_encoding

    encoding, _ = reference_input_encoding("cmx", ["rgb", "thermal"])
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "thermal"], num_classes=3,
                         head_channels=16, input_encoding=encoding).eval()
    path = export_onnx(model, tmp_path / "rgbt.onnx", size=(64, 64))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert {i.name: i.shape[1] for i in session.get_inputs() if i.name != "present"} == {"rgb": 3, "thermal": 1}
    assert read_onnx_metadata(path)["model_config"]["input_encoding"] == encoding
    g = torch.Generator().manual_seed(2)
    inputs = {"rgb": torch.randn(2, 3, 48, 80, generator=g), "thermal": torch.randn(2, 1, 48, 80, generator=g)}
    assert verify_onnx(path, model, inputs) <= TOL
    assert verify_onnx(path, model, inputs, {"thermal": torch.tensor([False, True])}) <= TOL


def test_a_failing_dynamo_export_is_one_error(tmp_path, monkeypatch):
    """torch.export gives up at some small example sizes; the error says so and what to do, not torch's traceback."""
    from rgbx.errors import ConfigError

    real_export = torch.onnx.export

    def export(*args, dynamo=False, **kwargs):
        if dynamo:
            raise RuntimeError("Failed to export the model with torch.export. This is step 1/3.\n- Modify the model\n"
                               "## Exception summary\n\n<class 'NotImplementedError'>: \nThe inequality, Eq(x, 0), "
                               "cannot be solved.\n\n(Refer to the full stack trace above for more information.)")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(ConfigError, match=r"could not export the model at the example size 40x56: <class "
                                          r"'NotImplementedError'>: The inequality, Eq\(x, 0\), cannot be solved\.; "
                                          r"the axes are dynamic.*--size 480x640"):
        export_onnx(tiny("cmx"), tmp_path / "m.onnx", size=(40, 56), exporter="dynamo")
    assert not (tmp_path / "m.onnx").exists()  # nothing half-written
