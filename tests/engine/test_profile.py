import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rgbx.cli.main import main
from rgbx.engine.profile import count_flops, count_parameters, profile_model
from rgbx.models import create_model


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a shared, busy 2-core machine two OpenMP threads make tiny models ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(attn_impl="sdpa", **kwargs):
    torch.manual_seed(0)
    return create_model(
        backbone="mit_nano",
        fusion="cmx",
        modalities=["rgb", "depth"],
        num_classes=3,
        head_channels=16,
        attn_impl=attn_impl,
        **kwargs,
    )


def inputs(size=32):
    return {"rgb": torch.randn(1, 3, size, size), "depth": torch.randn(1, 1, size, size)}


def attn_impls(model):
    return {m.attn_impl for m in model.modules() if hasattr(m, "attn_impl")}


def test_parameter_counts():
    model = tiny()
    model.encoder.branches["depth"].requires_grad_(False)
    params = count_parameters(model)
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert (
        params["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad) < params["total"]
    )
    assert sum(params["by_module"].values()) == params["total"]
    assert sum(params["by_submodule"].values()) == params["total"]
    assert params["by_module"]["head"] == sum(p.numel() for p in model.head.parameters())
    assert params["by_submodule"]["encoder.branches.rgb"] == sum(
        p.numel() for p in model.encoder.branches["rgb"].parameters()
    )
    assert {"encoder.rectify", "encoder.fuse", "head.classifier"} <= set(params["by_submodule"])


def test_hand_checkable_conv_flops():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1))
    flops = count_flops(model, torch.randn(1, 3, 8, 8))
    macs = 8 * 8 * 4 * (3 * 3 * 3) + 8 * 8 * 2 * 4  # per output element: in_channels x kernel area
    assert flops["flops"] == 2 * macs == 14848
    assert flops["gmacs"] == pytest.approx(macs / 1e9) and flops["gflops"] == pytest.approx(2 * macs / 1e9)
    assert flops["by_op"] == {"convolution": pytest.approx(2 * macs / 1e9)}


def test_flops_force_eager_attention_and_restore_it():
    sdpa, eager = tiny("sdpa").train(), tiny("eager")
    x = inputs()
    plain = FlopCounterMode(display=False)
    with torch.no_grad(), plain:
        sdpa.eval()(x)
    sdpa.train()
    f_sdpa, f_eager = count_flops(sdpa, x), count_flops(eager, x)
    assert f_sdpa["flops"] > 0 and f_sdpa["flops"] == f_eager["flops"]
    assert f_sdpa["flops"] > plain.get_total_flops()  # SDPA is invisible to the counter on the CPU
    assert f_sdpa["attn_forced_eager"] and f_sdpa["by_op"]["bmm"] > 0
    assert set(f_sdpa["by_module"]) == {"encoder", "head"}
    assert attn_impls(sdpa) == {"sdpa"} and sdpa.config.attn_impl == "sdpa" and sdpa.training
    assert attn_impls(eager) == {"eager"} and eager.config.attn_impl == "eager"


def test_flops_by_submodule_cover_branches_run_stage_by_stage():
    """CMX runs its branches stage by stage (``forward_stage``), never calling a branch as a module: a branch's
    FLOPs are its stages'. Each branch's equal that of the branch counted alone, and the encoder's submodules add up
    to the encoder."""
    model = tiny("eager")  # attention the counter sees in the branch counted alone too
    x = inputs()
    flops = count_flops(model, x)
    sub = flops["by_submodule"]
    assert {"encoder.branches.rgb", "encoder.branches.depth", "encoder.rectify", "encoder.fuse",
            "head.fuse", "head.classifier"} <= set(sub)
    assert sum(v for k, v in sub.items() if k.startswith("encoder.")) == pytest.approx(flops["by_module"]["encoder"])
    branch = model.encoder.branches["depth"]
    alone = FlopCounterMode(display=False)
    with torch.no_grad(), alone:
        y = x["depth"]
        for i in range(branch.num_stages):
            y = branch.forward_stage(i, y)
    assert sub["encoder.branches.depth"] == pytest.approx(alone.get_total_flops() / 1e9)
    assert sub["encoder.branches.rgb"] > sub["encoder.branches.depth"]  # three input channels against one


def test_profile_model_keys_and_restoration():
    model = tiny().train()
    result = profile_model(model, inputs(), device="cpu", warmup=1, repeats=2, batch_sizes=(2, 1))
    assert result["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert result["flops"]["gflops"] > 0 and result["flops"]["gmacs"] == pytest.approx(
        result["flops"]["gflops"] / 2
    )
    assert [t["batch"] for t in result["timings"]] == [1, 2]
    for t in result["timings"]:
        assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"] and t["images_per_s"] > 0
        assert t["peak_memory_mb"] is None
    assert set(result["latency_ms"]) == {"median", "min", "max", "mean", "batch"}
    assert all(v > 0 for v in result["latency_ms"].values())
    assert result["throughput"]["batch"] == 2 and result["throughput"]["images_per_s"] > 0
    assert result["peak_memory_mb"] is None and result["device"] == "cpu"
    assert result["threads"] == 1 and result["attn_impl"] == ["sdpa"]
    assert result["input_shapes"] == {"rgb": [3, 32, 32], "depth": [1, 32, 32]}
    json.dumps(result)
    assert model.training and attn_impls(model) == {"sdpa"} and model.config.attn_impl == "sdpa"
    with pytest.raises(ValueError):
        profile_model(model, inputs(), repeats=0)


def test_profile_ham_head_model():
    model = tiny(head="ham")
    result = profile_model(model, inputs(), warmup=0, repeats=1, batch_sizes=(1,))
    assert result["flops"]["by_module"]["head"] > 0 and result["throughput"]["batch"] == 1


def test_cli_profile_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(
        [
            "profile",
            "--backbone",
            "mit_nano",
            "--fusion",
            "cmx",
            "--modalities",
            "rgb",
            "depth",
            "--num-classes",
            "3",
            "--size",
            "64x64",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
            "--threads",
            "2",
        ]
    )
    assert code == 0
    assert torch.get_num_threads() == 1  # --threads held for the command only (main() called in-process)
    result = json.loads(out.read_text())
    assert result["threads"] == 2
    assert result["model"]["backbone"] == "mit_nano" and result["model"]["num_classes"] == 3
    assert result["input_shapes"]["rgb"] == [3, 64, 64] and result["flops"]["gmacs"] > 0
    printed = capsys.readouterr().out
    assert "GMACs" in printed and "images/s" in printed


def test_cli_profile_help_and_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "66.6 M" in text and "--head-channels" in text
    assert main(["profile", "--backbone", "mit_nano", "--size", "32x32"]) == 2  # no --num-classes
    assert "--num-classes" in capsys.readouterr().err


def test_flops_by_submodule_count_each_flop_once():
    """The mean fusion's per-sensor stems run inside the shared backbone's first stage: FlopCounterMode counted their
    FLOPs in both rows (encoder.backbone alone equalled the whole encoder), and the head's functional convolution in
    none. The rows are disjoint now and add up to the total; the backbone's row is its stages without the stems."""
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=5,
                         head_channels=16)
    x = {"rgb": torch.randn(1, 3, 64, 80), "depth": torch.randn(1, 1, 64, 80)}
    flops = count_flops(model, x)
    sub = flops["by_submodule"]
    assert sum(sub.values()) == pytest.approx(flops["gflops"], rel=1e-12)
    assert sum(v for k, v in sub.items() if k.startswith("encoder.")) == pytest.approx(flops["by_module"]["encoder"])
    stems = sub["encoder.stems.rgb"] + sub["encoder.stems.depth"]
    assert stems > 0 and sub["encoder.backbone"] == pytest.approx(flops["by_module"]["encoder"] - stems)
    assert sub["head.(own)"] > 0  # the MLP head's projections, run as functional convolutions
