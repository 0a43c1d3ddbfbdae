"""rgbx bench and the speed switches: every switch runs the real training step / inference on the CPU and computes
what the exact path computes (within the switch's rounding)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from rgbx.cli.main import main
from rgbx.engine.bench import Timing, make_inference, make_train_step, time_alternating
from rgbx.engine.fastpath import SpeedOptions, apply_speed_options
from rgbx.errors import ConfigError
from rgbx.models import create_model
from tests.conftest import make_dataset
from tests.engine.test_graphed_training import assert_moved_alike

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def tiny(fusion="cmx", modalities=("rgb", "depth")):
    torch.manual_seed(0)
    return create_model(backbone="mit_nano", fusion=fusion, head="mlp", modalities=list(modalities), num_classes=4,
                        head_channels=16)


def data(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"rgb": torch.randn(batch, 3, size, size, generator=g), "depth": torch.randn(batch, 1, size, size, generator=g)}
    y = torch.randint(0, 4, (batch, size, size), generator=g)
    return x, y


def test_time_alternating_interleaves_calls_and_reports_median():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = time_alternating(fns, torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up of each, then one call of each per round
    assert set(t) == {"a", "b"} and all(v.repeats == 3 and v.min_ms <= v.median_ms <= v.max_ms for v in t.values())
    assert Timing.of([1.0, 3.0, 2.0]).median_ms == 2.0 and Timing.of([2.0]).per_second(4) == 2000.0
    calls.clear()
    t = time_alternating(fns, torch.device("cpu"), warmup=0, repeats=2, settle=1)
    assert calls == ["a", "a", "b", "b"] * 2  # an untimed call of the same candidate before each timed one
    assert all(v.repeats == 2 for v in t.values())


SWITCHES = {
    "exact": SpeedOptions.exact(),
    "sdpa": SpeedOptions.exact().with_(attn_impl="sdpa"),
    "bf16": SpeedOptions.exact().with_(precision="bf16"),
    "channels_last": SpeedOptions.exact().with_(channels_last=True),
    "fused_adamw": SpeedOptions.exact().with_(fused_optimizer=True),
    "fold_head": SpeedOptions.exact().with_(fold_head=True),
    "keep_host_memory": SpeedOptions.exact().with_(keep_host_memory=True),  # changes no value: bit for bit
    "lowp_norms": SpeedOptions.exact().with_(precision="bf16", lowp_norms=True),  # needs autocast: bf16 with it
    "compile": SpeedOptions.exact().with_(compile=True, compile_backend="aot_eager"),  # blocks, the default scope
    "compile_model": SpeedOptions.exact().with_(compile=True, compile_scope="model", compile_backend="aot_eager"),
    "compile_lowp_norms": SpeedOptions.exact().with_(precision="bf16", lowp_norms=True, compile=True,
                                                     compile_backend="aot_eager"),
    # CUDA-only effects (TF32 matmuls, cuDNN autotuning): on the CPU they must change nothing
    "tf32": SpeedOptions.exact().with_(tf32=True),
    "cudnn_benchmark": SpeedOptions.exact().with_(cudnn_benchmark=True),
}
TOLERANCE = {"keep_host_memory": 0, "bf16": 2e-2, "lowp_norms": 2e-2, "compile_lowp_norms": 2e-2, "compile": 1e-4, "compile_model": 1e-4}
LOW_PRECISION = ("bf16", "lowp_norms", "compile_lowp_norms")


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_trains_like_the_exact_path(name):
    x, y = data()
    losses = {}
    for label, opts in (("exact", SWITCHES["exact"]), (name, SWITCHES[name])):
        model = tiny()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        step = make_train_step(model, x, y, opts, lr=1e-3)
        losses[label] = [float(step()) for _ in range(3)]
        changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
        assert changed, f"{label}: the optimizer changed no parameter"
    # same initial weights and data: the first loss agrees to the switch's rounding, and training makes progress
    assert losses[name][0] == pytest.approx(losses["exact"][0], rel=TOLERANCE.get(name, 1e-5))
    assert losses[name][-1] < losses[name][0]


@pytest.mark.parametrize("name", ["sdpa", "bf16", "channels_last", "fold_head", "keep_host_memory", "lowp_norms",
                                  "compile",
                                  "compile_model", "compile_lowp_norms", "tf32", "cudnn_benchmark"])
def test_each_switch_infers_like_the_exact_path(name):
    x, _ = data(batch=1)
    model = tiny()
    ref = make_inference(model, x, SWITCHES["exact"])().clone()
    out = make_inference(tiny(), x, SWITCHES[name])()
    assert out.shape == ref.shape
    assert (out.float() - ref).abs().max().item() < (5e-2 if name in LOW_PRECISION else 1e-4)
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > (0.97 if name in LOW_PRECISION else 0.999)


def test_apply_speed_options_switches_attention_and_layout():
    model = tiny()
    apply_speed_options(model, SpeedOptions(attn_impl="eager", channels_last=True))
    assert model.config.attn_impl == "eager"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_blocks_compiles_each_block_once_per_shape():
    """The blocks scope compiles the marked modules in place (state dict unchanged), one graph per distinct block
    shape (the MiT blocks of both branches share theirs), and computes what the eager model computes."""
    from torch._dynamo.utils import counters

    from rgbx.engine.fastpath import compile_regions

    x, _ = data(batch=1)
    ref_model = tiny().eval()
    with torch.no_grad():
        ref = ref_model(x).logits
    model = tiny().eval()
    keys = list(model.state_dict())
    torch._dynamo.reset()
    counters.clear()
    regions = compile_regions(model, SpeedOptions(compile=True, compile_backend="aot_eager"))
    names = {type(m).__name__ for m in regions}
    assert {"MiTBlock", "FeatureRectifyModule", "FeatureFusionModule", "MLPHead"} <= names
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        out = model(x).logits
    assert (out - ref).abs().max().item() < 1e-5
    blocks = [m for m in regions if type(m).__name__ == "MiTBlock"]
    graphs = counters["stats"]["unique_graphs"]
    # every region ran compiled, yet far fewer graphs were made than there are regions
    assert 0 < graphs < len(regions) and len(blocks) >= 8, (graphs, len(regions))
    with pytest.raises(ConfigError, match="compile_scope"):
        compile_regions(tiny(), SpeedOptions(compile=True, compile_scope="everything"))


AMD_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx fma avx2 bmi2
"""
INTEL_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32
"""


def test_the_cpu_is_described_by_what_the_fast_set_depends_on():
    from rgbx.engine.fastpath import cpu_has_bf16, describe_cpu

    assert describe_cpu(AMD_AVX2) == "AMD EPYC (AVX2; no bf16 matrix units)" and not cpu_has_bf16(AMD_AVX2)
    assert describe_cpu(INTEL_AMX) == ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz "
                                       "(AVX-512, AMX-BF16, AVX512-BF16)") and cpu_has_bf16(INTEL_AMX)
    assert describe_cpu(ARM).endswith("(NEON; no bf16 matrix units)")  # no model name line: the machine's type
    assert describe_cpu("")  # no /proc/cpuinfo: what the platform module says
    assert describe_cpu() and cpu_has_bf16() == ("no bf16 matrix units" not in describe_cpu())  # this machine


def test_fast_options_follow_the_device(monkeypatch):
    import rgbx.engine.fastpath as fp

    cuda = SpeedOptions.fast("cuda")
    assert (cuda.precision, cuda.attn_impl, cuda.cuda_graph, cuda.fused_optimizer) == ("bf16", "sdpa", True, True)
    monkeypatch.setattr(fp, "cpu_has_bf16", lambda: False)
    assert SpeedOptions.fast("cpu").precision == "fp32"
    monkeypatch.setattr(fp, "cpu_has_bf16", lambda: True)
    assert SpeedOptions.fast("cpu").precision == "bf16" and SpeedOptions.fast("cpu").channels_last
    assert "channels-last" in SpeedOptions(channels_last=True).describe()
    assert cuda.fold_head and SpeedOptions.fast("cpu").fold_head and not SpeedOptions.exact().fold_head
    assert "fold-head" in SpeedOptions(fold_head=True).describe()
    # bf16 LayerNorms: for CUDA, whose autocast runs them in fp32; the CPU's autocast already leaves them in bf16
    assert cuda.lowp_norms and not SpeedOptions.fast("cpu").lowp_norms and not SpeedOptions.exact().lowp_norms
    assert "lowp-norms" in cuda.describe() and "lowp-norms" not in SpeedOptions(lowp_norms=True).describe()
    assert "lowp-norms" not in cuda.with_(precision="fp16").describe()  # bf16 only


def test_apply_speed_options_folds_the_head_and_unfolds_it():
    model = tiny()
    apply_speed_options(model, SpeedOptions(fold_head=True))
    assert model.head.fold and all(lin.keep_weight_dtype for lin in model.head.linear)
    apply_speed_options(model, SpeedOptions.exact())
    assert not model.head.fold and not any(lin.keep_weight_dtype for lin in model.head.linear)


def test_lowp_norms_reach_every_layer_norm_and_keep_the_stream_in_bf16():
    """``lowp_norms`` switches every rgbx LayerNorm of the model; under autocast their outputs are then bf16, also
    where the input is fp32 (DFormer's layer-scaled residual stream), which stock autocast would keep fp32."""
    from rgbx.engine.fastpath import autocast
    from rgbx.models.layers import LOWP_NORMS

    torch.manual_seed(0)
    model = create_model(backbone="dformer_nano", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=4, head_channels=16).eval()
    norms = [m for m in model.modules() if isinstance(m, LOWP_NORMS)]
    assert len(norms) > 4
    seen = []
    for m in norms:
        m.register_forward_hook(lambda mod, inputs, out: seen.append((inputs[0].dtype, out.dtype)))
    x, _ = data(batch=1, size=64)
    outputs = {}
    for lowp in (False, True):
        apply_speed_options(model, SpeedOptions(precision="bf16", lowp_norms=lowp))
        assert all(m.lowp == lowp for m in norms)
        seen.clear()
        with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
            outputs[lowp] = model(x).logits.float()
        if lowp:
            assert {out for _, out in seen} == {torch.bfloat16}
        else:  # without the switch some norms take and give fp32
            assert (torch.float32, torch.float32) in seen
    assert (outputs[True] - outputs[False]).abs().max().item() < 5e-2


def test_fp16_on_cpu_is_a_clear_error():
    from rgbx.errors import ConfigError

    x, y = data()
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        make_train_step(tiny(), x, y, SpeedOptions(precision="fp16"))()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_inference_matches_eager_and_follows_new_inputs():
    x, _ = data(batch=1)
    x = {k: v.cuda() for k, v in x.items()}
    eager = make_inference(tiny().cuda(), x, SpeedOptions(attn_impl="sdpa"))().clone()
    graphed = make_inference(tiny().cuda(), x, SpeedOptions(attn_impl="sdpa", cuda_graph=True))
    assert (graphed() - eager).abs().max().item() < 1e-4
    # the graph keeps the model it replays alive: the caller above kept no reference to it, and memory freed by a
    # model would now be taken by these tensors (on the H100 a second graphed model gave NaN, then a crash)
    import gc

    gc.collect()
    filler = [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(64)]
    assert (graphed() - eager).abs().max().item() < 1e-4, len(filler)


def test_cuda_graph_train_refuses_what_it_cannot_capture():
    from rgbx.engine.fastpath import CudaGraphTrainStep
    from rgbx.engine.optim import build_optimizer

    x, y = data()
    with pytest.raises(ConfigError, match="cuda_graph_train needs CUDA"):
        make_train_step(tiny(), x, y, SpeedOptions(cuda_graph_train=True))
    model = tiny()
    optimizer = build_optimizer(model, __import__("rgbx.engine.config", fromlist=["OptimConfig"]).OptimConfig())
    with pytest.raises(ConfigError, match="needs CUDA tensors"):
        CudaGraphTrainStep(lambda: torch.zeros(()), optimizer, x)
    assert "cuda-graph-train" in SpeedOptions(cuda_graph_train=True).describe()
    rc = main(["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth",
               "--num-classes", "4", "--device", "cpu", "--options", "graphed"])
    assert rc != 0


def test_exact_optimizer_is_pytorchs_default_and_capturable_is_passed_on():
    from rgbx.engine.config import OptimConfig
    from rgbx.engine.optim import build_optimizer

    plain = build_optimizer(tiny(), OptimConfig(), fused=False)
    assert all(g["foreach"] is None and not g["fused"] and not g["capturable"] for g in plain.param_groups)
    captured = build_optimizer(tiny(), OptimConfig(), fused=False, capturable=True)
    assert all(g["capturable"] for g in captured.param_groups)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_train_step_matches_the_eager_step(precision):
    """The replayed graph trains like the eager step: same losses step by step, same weights after, and it reads
    new data copied into its input buffers."""
    x, y = data(batch=2, size=64)
    x, y = {k: v.cuda() for k, v in x.items()}, y.cuda()
    x2, y2 = data(batch=2, size=64, seed=1)
    x2, y2 = {k: v.cuda() for k, v in x2.items()}, y2.cuda()
    opts = SpeedOptions(precision=precision, attn_impl="sdpa", fused_optimizer=True)

    def model():
        torch.manual_seed(0)
        return create_model(backbone="mit_nano", fusion="cmx", head="mlp", modalities=["rgb", "depth"],
                            num_classes=4, head_channels=16, drop_path_rate=0.0).cuda()

    eager_model, graphed_model = model(), model()
    start = {k: v.clone() for k, v in eager_model.state_dict().items()}
    eager = make_train_step(eager_model, x, y, opts, lr=1e-3)
    eager_x, eager_y = x, y  # the eager step reads these tensors at each call, the graph its own copies
    # the head's dropout draws from the CUDA generator: both sides start each step from the same seed (a replay
    # reads the generator's seed and offset when it starts, so a graph follows torch.manual_seed like eager code)
    torch.manual_seed(0)
    for _ in range(3):  # the graphed step's three warm-up steps, one after the other from one seed
        eager()
    torch.manual_seed(0)
    graphed = make_train_step(graphed_model, {k: v.clone() for k, v in x.items()}, y.clone(),
                              opts.with_(cuda_graph_train=True), lr=1e-3)
    tol = 1e-4 if precision == "fp32" else 2e-2

    def both(new=None):
        torch.manual_seed(len(seen))
        a = eager().item()
        torch.manual_seed(len(seen))
        b = (graphed(new) if new else graphed()).item()
        seen.append((a, b))
        assert abs(a - b) <= tol * abs(a), seen

    seen = []
    for _ in range(3):
        both()
    for k in x:
        eager_x[k].copy_(x2[k])
    eager_y.copy_(y2)
    both({**x2, "label": y2})
    # whole-model distances, not entry by entry: AdamW turns rounding-level differences of near-zero gradients into
    # differences of up to a step's size in single entries (on the H100: 9e-4 in fp32, 0.036 in bf16, at lr 1e-3)
    assert_moved_alike(start, eager_model.state_dict(), graphed_model.state_dict(),
                       0.01 if precision == "fp32" else 0.1)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_of_a_captured_step_counts_its_capture():
    """A replayed graph allocates nothing: peak memory counted only over replays shows the tensors alive between
    steps (1.5 of 8.8 GiB for CMX-B2 on an H100). Counted from the build on, the captured step's peak is about the
    eager step's (same activations, now in the graph's pool), here where activations outweigh the weights."""
    from rgbx.engine.bench import bench_model

    fast = SpeedOptions.fast("cuda")
    result = bench_model(tiny, ["rgb", "depth"], 4, {"fast": fast, "graphed": fast.with_(cuda_graph_train=True)},
                         device=torch.device("cuda"), train_size=(256, 256), train_batch=8, warmup=1, repeats=1,
                         what=("train",))
    peaks = {k: r["train"]["peak_memory_mb"] for k, r in result["results"].items()}
    params_mb = sum(p.numel() for p in tiny().parameters()) * 4 / 2**20
    # weights, gradients and AdamW's two moments are 4x the weights; about 150 MiB of activations are saved at this
    # size (bf16), against 27 MiB for those four
    assert peaks["fast"] > 8 * params_mb, (peaks, params_mb)
    assert 0.5 * peaks["fast"] <= peaks["graphed"] <= 2 * peaks["fast"], peaks

def test_rgbx_bench_cli_writes_every_option_set(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth",
               "--num-classes", "4", "--head-channels", "16", "--size", "32x32", "--train-size", "32x32",
               "--train-batch", "2", "--throughput-batch", "2", "--warmup", "0", "--repeats", "1", "--sweep",
               "--device", "cpu", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    labels = set(result["results"])
    assert {"exact", "fast", "exact + attn_impl"} <= labels
    for r in result["results"].values():
        assert r["train"]["images_per_s"] > 0 and r["latency"]["median_ms"] > 0
        assert r["throughput"]["batch"] == 2 and r["train"]["mfu"] is None  # no peak known for a CPU
    assert result["flops"]["fwd_per_image"] > 0 and result["params"] > 0
    assert "train img/s" in capsys.readouterr().out


def test_rgbx_bench_times_the_exported_file_in_each_runtime(tmp_path, capsys):
    """--runtimes: the file rgbx export writes, run as rgbx eval / predict FILE.onnx run it. A runtime that cannot
    run here (not installed; bf16 on a processor without it) is a row with its reason, the others still count."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    args = ["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth", "--num-classes", "4",
            "--head-channels", "16", "--size", "32x32", "--throughput-batch", "2", "--warmup", "0", "--repeats", "1",
            "--device", "cpu", "--options", "exact"]
    assert main([*args, "--what", "latency", "throughput", "--runtimes", "onnxruntime", "openvino-bf16",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["exact", "onnx: onnxruntime", "onnx: openvino-bf16"]
    ort = results["onnx: onnxruntime"]
    assert ort["latency"]["batch"] == 1 and ort["latency"]["median_ms"] > 0
    assert ort["throughput"]["batch"] == 2 and ort["throughput"]["images_per_s"] > 0
    bf16 = results["onnx: openvino-bf16"]
    assert ("error" in bf16) != ("latency" in bf16)  # measured, or the reason it could not be
    assert "onnx: onnxruntime" in capsys.readouterr().out
    assert main([*args, "--what", "train", "--runtimes", "onnxruntime"]) == 2
    assert "--runtimes times inference" in capsys.readouterr().err


def test_rgbx_bench_data_times_the_input_pipeline(tmp_path, capsys):
    """Each worker count is timed after a warm-up of every batch its workers prepare ahead (2 each), over at least
    twice that many batches, and a dataset smaller than warm-up + timed batches is read again: 4 samples give 12
    batches of 2 here."""
    root = make_dataset(tmp_path / "ds", n=4)
    out = tmp_path / "data.json"
    rc = main(["bench", "--data", str(root), "--modalities", "rgb", "depth", "--workers", "0", "2", "--batch", "2",
               "--batches", "3", "--crop", "16x16", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["workers"], r["warmup"], r["batches"]) for r in rows] == [(0, 2, 3), (2, 4, 8)]
    assert all(r["samples_per_s"] > 0 for r in rows)
    assert "samples/s" in capsys.readouterr().out
    rc = main(["bench", "--data", str(root), "--modalities", "rgb", "depth", "--workers", "0", "--batch", "8",
               "--crop", "16x16"])
    assert rc != 0 and "fewer than one batch of 8" in capsys.readouterr().err


def test_rgbx_bench_data_times_the_geometric_step_on_the_batch(tmp_path):
    """--geometric-on batch: the workers leave resize / crop / flip to the batch, which is moved to --device and
    transformed there inside the timed loop (every batch, warm-up included)."""
    from rgbx.data import build_dataset
    from rgbx.data.transforms import TrainTransform
    from rgbx.engine.bench import bench_data

    root = make_dataset(tmp_path / "ds", n=4)
    out = tmp_path / "data.json"
    assert main(["bench", "--data", str(root), "--modalities", "rgb", "depth", "--workers", "0", "--batch", "2",
                 "--batches", "2", "--crop", "16x16", "--geometric-on", "sample", "batch", "--device", "cpu",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["geometric_on"] for r in rows] == ["sample", "batch (cpu)"]

    dataset = build_dataset("folder", root, "train", modalities=["rgb", "depth"])
    dataset.transform = TrainTransform(crop_size=(16, 16), geometric_on="batch")
    step, seen = dataset.transform.batch_geometry(), []

    def recording(batch):
        seen.append((batch.inputs["rgb"].shape, batch.geometry is not None))
        out = step(batch)
        seen.append((out.inputs["rgb"].shape, out.geometry is not None))
        return out

    row = bench_data(dataset, 2, 0, batches=3, batch_transform=recording, device="cpu")
    assert row["samples_per_s"] > 0 and len(seen) == 2 * (row["warmup"] + row["batches"])
    size = tuple(dataset[0]["inputs"]["rgb"].shape[-2:])
    assert seen[0] == ((2, 3, *size), True) and seen[1] == ((2, 3, 16, 16), False)


def test_compare_reference_agreement_check_detects_different_weights():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare_reference as cr
    finally:
        sys.path.remove(str(BENCHMARKS))

    model = tiny().eval()

    class Wrapped(torch.nn.Module):  # a "reference" with the references' (rgb, x3) signature, same weights
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, rgb, x3):
            return self.m({"rgb": rgb, "depth": x3[:, :1]}).logits

    import copy

    ref = Wrapped(copy.deepcopy(model))
    inputs = cr.Inputs.random(1, (32, 32), torch.device("cpu"), 0)
    assert cr.agreement(ref, model, inputs, seed=0) < 1e-5
    with torch.no_grad():
        ref.m.head.classifier.bias.add_(0.1)
    assert cr.agreement(ref, model, inputs, seed=0) > 1e-2


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_compare_reference_times_the_exported_file_in_a_runtime(runtime):
    """``--runtimes``: the candidate runs the model exported at the latency size, and gives the model's logits."""
    pytest.importorskip("onnx")
    pytest.importorskip(runtime)
    import argparse

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare_reference as cr
    finally:
        sys.path.remove(str(BENCHMARKS))
    model = tiny().eval()
    infer = cr.Inputs.random(1, (32, 32), torch.device("cpu"), 0)
    run = cr.runtime_inference(model, infer, runtime, argparse.Namespace(size=(32, 32)))()
    with torch.no_grad():
        torch.testing.assert_close(run(), model(infer.rgbx).logits, atol=1e-4, rtol=1e-4)


def test_backend_flags_are_restored():
    from rgbx.engine.fastpath import backend_flags

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    with backend_flags(SpeedOptions(tf32=not saved[0], cudnn_benchmark=not saved[1])):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == (not saved[0], not saved[1])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == saved


@pytest.mark.parametrize("backbone, fusion, head", [("dformer_nano", "dformer", "ham"), ("omni_nano", "omni", "fcn"),
                                                    ("mit_nano", "cmnext", "mlp"), ("mit_nano", "ktb", "mlp")])
def test_compile_blocks_every_model_family(backbone, fusion, head):
    """Each family's marked blocks compile (aot_eager: real tracing) and the model computes what it computes eager."""
    from rgbx.engine.fastpath import compile_regions

    x, _ = data(batch=1)

    def build():
        torch.manual_seed(0)
        return create_model(backbone=backbone, fusion=fusion, head=head, modalities=["rgb", "depth"], num_classes=4,
                            head_channels=16).eval()

    with torch.no_grad():
        ref = build()(x).logits
    model = build()
    regions = compile_regions(model, SpeedOptions(compile=True, compile_backend="aot_eager"))
    assert len(regions) >= 2
    with torch.no_grad():
        out = model(x).logits
    assert (out - ref).abs().max().item() < 1e-4


def test_profile_step_counts_each_kernel_once():
    """The kernel rows repeat the device time of the operators that launched them: the busy time counts it once."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from profile_step import kernel_time_ms
    finally:
        sys.path.remove(str(BENCHMARKS))
    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    events = [SimpleNamespace(device_type=cpu, is_user_annotation=False, self_device_time_total=3000.0),  # aten::mm
              SimpleNamespace(device_type=cuda, is_user_annotation=False, self_device_time_total=3000.0),  # its kernel
              SimpleNamespace(device_type=cpu, is_user_annotation=False, self_device_time_total=1500.0),
              SimpleNamespace(device_type=cuda, is_user_annotation=True, self_device_time_total=4500.0),
              SimpleNamespace(device_type=cpu, is_user_annotation=False, self_device_time_total=0.0)]
    assert kernel_time_ms(events) == 4.5


def test_compare_reference_keeps_the_other_figures_when_an_optional_candidate_fails():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare_reference as cr
    finally:
        sys.path.remove(str(BENCHMARKS))

    def broken():
        raise RuntimeError("capture failed")

    factories = {"rgbx graphed": broken, "rgbx fast": lambda: (lambda: torch.zeros(()))}
    out = cr.measure(factories, torch.device("cpu"), warmup=0, repeats=1, alternate=False,
                     optional=["rgbx graphed"])
    assert set(out) == {"rgbx fast"}
    assert out["rgbx fast"]["timing"].repeats == 1 and set(out["rgbx fast"]["seconds"]) == {"build", "timed"}
    with pytest.raises(RuntimeError, match="capture failed"):
        cr.measure(factories, torch.device("cpu"), warmup=0, repeats=1, alternate=False)


def test_rgbx_bench_reports_a_failing_option_set_and_keeps_the_others(tmp_path, capsys, monkeypatch):
    import rgbx.engine.bench as bench

    real = bench.make_train_step

    def fails_channels_last(model, x, y, opts, **kw):
        if opts.channels_last:
            raise RuntimeError("capture failed")
        return real(model, x, y, opts, **kw)

    monkeypatch.setattr(bench, "make_train_step", fails_channels_last)
    out = tmp_path / "bench.json"
    rc = main(["bench", "--backbone", "mit_nano", "--fusion", "cmx", "--modalities", "rgb", "depth",
               "--num-classes", "4", "--head-channels", "16", "--size", "32x32", "--train-size", "32x32",
               "--train-batch", "2", "--warmup", "0", "--repeats", "1", "--what", "train", "--device", "cpu",
               "--options", "exact", "custom", "--channels-last", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    assert results["custom"]["error"] == "RuntimeError: capture failed"
    assert results["exact"]["train"]["images_per_s"] > 0
    assert "custom: FAILED: RuntimeError: capture failed" in capsys.readouterr().out


@pytest.mark.parametrize("backbone, fusion, head", [("mit_nano", "cmx", "mlp"), ("mit_nano", "mean", "mlp"),
                                                    ("dformer_nano", "dformer", "ham"), ("omni_nano", "omni", "fcn"),
                                                    ("mit_nano", "cmnext", "mlp"), ("mit_nano", "ktb", "mlp")])
@pytest.mark.parametrize("fold", [False, True])
def test_cast_weights_gives_autocasts_outputs_bit_for_bit_without_the_casts(backbone, fusion, head, fold):
    """SpeedOptions.cast_weights: linear / conv weights cast once to bf16 give the very logits autocast gives, while
    a forward pass no longer casts them (CMNeXt's folded patch embedding keeps fp32, as its sum needs, and so do the
    layers a folded head multiplies together)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from rgbx.engine.fastpath import autocast, cast_inference_weights

    class CountCasts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.casts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.casts += func.overloadpacket.__name__ in ("to", "_to_copy")
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = create_model(backbone=backbone, fusion=fusion, head=head, modalities=["rgb", "depth"], num_classes=4,
                         head_channels=16).eval()
    model.set_fold_head(fold)
    x, _ = data(batch=1, size=64)
    cpu = torch.device("cpu")
    counts = []
    for cast in (False, True):
        if cast:
            assert cast_inference_weights(model, "fp32") is model and next(model.parameters()).dtype == torch.float32
            cast_inference_weights(model, "bf16")
        with torch.inference_mode(), autocast(cpu, "bf16"), CountCasts() as mode:
            out = model(x).logits
        counts.append((out, mode.casts))
    (ref, before), (got, after) = counts
    assert torch.equal(ref, got)
    assert after < before / 3, (before, after)
    kept = [m for m in model.modules() if getattr(m, "keep_weight_dtype", False)]
    assert all(p.dtype == torch.float32 for m in kept for p in m.parameters())
    assert "cast-weights" in SpeedOptions(precision="bf16", cast_weights=True).describe()
    assert "cast-weights" not in SpeedOptions(cast_weights=True).describe()  # nothing to cast in fp32


def test_compile_report_says_where_compile_time_went_and_a_stopped_bench_still_prints_it(tmp_path):
    """rgbx bench with torch.compile prints dynamo's phase timers after the table, and also when a time limit stops
    it mid-compilation (SIGTERM, as `timeout` sends): exit status 124 and the report so far."""
    import signal
    import subprocess
    import time

    from torch._dynamo.utils import counters

    from rgbx.engine.fastpath import compile_report

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda t: (t * 2).sin(), backend="aot_eager", dynamic=False)
    compiled(torch.randn(3))
    compiled(torch.randn(4))  # static shapes: compiled again
    report = compile_report(rows=5)
    assert report.startswith("torch.compile: 2 frames compiled, 2 graphs"), report
    phases = report.splitlines()[1:]
    assert 1 <= len(phases) <= 5 and all(line.strip().split()[1] == "s" for line in phases), report

    cmd = [sys.executable, "-m", "rgbx.cli.main", "bench", "--backbone", "mit_nano", "--fusion", "cmx",
           "--modalities", "rgb", "depth", "--num-classes", "4", "--head-channels", "16", "--size", "32x32",
           "--device", "cpu", "--what", "latency", "--warmup", "1", "--repeats", "1", "--options", "custom",
           "--compile"]  # inductor: compiles for far longer than the two seconds below
    import os

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # empty caches: a real compile
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = proc.stdout.readline()
        assert first.startswith("compiling: a SIGTERM"), first
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # 124 from the handler: a SystemExit raised inside inductor was once caught there, compilation went on for 43 s
    # and the run ended with 0
    assert proc.returncode == 124, out[-2000:]
    assert "stopped by signal 15" in out and "torch.compile: " in out


@pytest.mark.parametrize("backbone, fusion, head", [("mit_nano", "cmx", "mlp"), ("dformer_nano", "dformer", "ham")])
def test_cast_weights_casts_the_lowp_norms_too_with_the_same_logits(backbone, fusion, head):
    """Under ``lowp_norms`` the LayerNorms cast their weights to bf16 at every call; casting them once with the
    linear / conv weights gives the same logits bit for bit. Without the switch they stay fp32."""
    from rgbx.engine.fastpath import autocast, cast_inference_weights
    from rgbx.models.layers import LOWP_NORMS

    def build(lowp):
        torch.manual_seed(0)
        model = create_model(backbone=backbone, fusion=fusion, head=head, modalities=["rgb", "depth"],
                             num_classes=4, head_channels=16).eval()
        with torch.no_grad():  # norms away from their (1, 0) init, so that a dropped weight would show
            for m in model.modules():
                if isinstance(m, LOWP_NORMS):
                    m.weight.normal_(1.0, 0.2), m.bias.normal_(0.0, 0.2)
        model.set_lowp_norms(lowp)
        return model

    x, _ = data(batch=1, size=64)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        ref = build(True)(x).logits
        model = cast_inference_weights(build(True), "bf16")
        got = model(x).logits
    assert torch.equal(ref, got)
    assert all(m.weight.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, LOWP_NORMS))
    plain = cast_inference_weights(build(False), "bf16")
    assert all(m.weight.dtype == torch.float32 for m in plain.modules() if isinstance(m, LOWP_NORMS))


def test_sweep_measures_the_low_precision_switches_as_the_fast_set_without_them():
    from types import SimpleNamespace

    from rgbx.cli.bench import option_sets

    args = SimpleNamespace(options=["exact", "fast"], sweep=True, compile_scope="blocks", compile_mode=None)
    sets = option_sets(args, torch.device("cuda"))
    fast = sets["fast"]
    assert sets["fast - lowp_norms"] == fast.with_(lowp_norms=False) and fast.lowp_norms
    assert sets["fast - cast_weights"] == fast.with_(cast_weights=False)
    assert "exact + lowp_norms" not in sets  # in fp32 the switch does nothing
    assert "fast - lowp_norms" not in option_sets(args, torch.device("cpu"))


def test_sweep_measures_matmul_resize_on_the_captured_step_on_cuda_only():
    from types import SimpleNamespace

    from rgbx.cli.bench import option_sets

    args = SimpleNamespace(options=["exact", "fast", "graphed"], sweep=True, compile_scope="blocks",
                           compile_mode=None)
    sets = option_sets(args, torch.device("cuda"))
    assert sets["graphed - matmul_resize"] == sets["graphed"].with_(matmul_resize=False)
    assert sets["fast"].matmul_resize and not SpeedOptions.fast("cpu").matmul_resize  # in CUDA's fast set only
    assert "matmul-resize" in sets["graphed"].describe()
    assert "matmul-resize" not in sets["graphed - matmul_resize"].describe()
    args.options = ["exact", "fast"]
    assert "fast - matmul_resize" in option_sets(args, torch.device("cuda"))
    cpu = SimpleNamespace(options=["exact", "fast"], sweep=True, compile_scope="blocks", compile_mode=None)
    assert not any("matmul_resize" in k for k in option_sets(cpu, torch.device("cpu")))


@pytest.mark.parametrize("backbone, fusion, head", [("mit_nano", "cmx", "mlp"), ("dformer_nano", "dformer", "ham")])
@pytest.mark.parametrize("fold", [False, True])
def test_matmul_resize_reaches_every_resize_and_keeps_the_logits(backbone, fusion, head, fold):
    """apply_speed_options(matmul_resize) switches the heads, DFormer's window attention (its resize and its
    pooling) and the final resize of the logits; the logits stay those of F.interpolate (fp32, up to rounding); training through it works."""
    torch.manual_seed(0)
    model = create_model(backbone=backbone, fusion=fusion, head=head, modalities=["rgb", "depth"], num_classes=4,
                         head_channels=16).eval()
    x, y = data(batch=2, size=64)
    apply_speed_options(model, SpeedOptions(fold_head=fold))
    with torch.no_grad():
        want = model(x).logits
    apply_speed_options(model, SpeedOptions(fold_head=fold, matmul_resize=True))
    switched = [m for m in model.modules() if hasattr(m, "matmul_resize")]
    assert len(switched) >= 2 and all(m.matmul_resize for m in switched)
    if backbone.startswith("dformer"):
        assert "DFormerAttention" in {type(m).__name__ for m in switched}
    calls = []
    import rgbx.models.layers as layers

    real, real_pooling = layers.resize_by_matmul, layers.pooling_matrix
    pooled = []
    try:
        layers.resize_by_matmul = lambda *a: calls.append(1) or real(*a)
        layers.pooling_matrix = lambda *a: pooled.append(1) or real_pooling(*a)
        with torch.no_grad():
            got = model(x).logits
    finally:
        layers.resize_by_matmul, layers.pooling_matrix = real, real_pooling
    assert calls and got.shape == want.shape
    assert bool(pooled) == backbone.startswith("dformer")  # DFormer's window attention pools by matrix products
    assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
    model.train()
    step = make_train_step(model, x, y, SpeedOptions(fold_head=fold, matmul_resize=True))
    assert all(torch.isfinite(step()) for _ in range(2))
