"""``rgbx profile``: parameters, FLOPs/MACs, latency and throughput of a model built from a config or from flags."""

from __future__ import annotations

import json
from pathlib import Path

from rgbx.cli.common import (
    add_command,
    add_model_arguments,
    model_config_from_args,
    non_negative_int,
    parse_size,
    positive_int,
    resolve_device,
)

EXAMPLES = """  rgbx profile --backbone mit_b2 --fusion cmx --modalities rgb depth --num-classes 40 --head-channels 512
  rgbx profile --config synth_cmx_b0 --num-classes 3 --size 240x320      # the model of a preset / YAML config
  rgbx profile --config runs/cmx/config.yaml --num-classes 3 --device cuda --batch 1 16 --json cost.json
  rgbx profile --backbone mit_nano --fusion cmx --modalities rgb depth --num-classes 3 --size 64x64 --repeats 2

published figures to compare with (NYU Depth V2, RGB-D, 480x640 input, 40 classes; the papers' "GFLOPs" are
multiply-accumulates, i.e. the GMACs column here):
  CMX (MiT-B2), MLP head with 512 channels: 66.6 M parameters, 67.6 G (Zhang et al., CMX, T-ITS 2023;
      repeated in the DFormer paper's comparison table)
      rgbx profile --backbone mit_b2 --fusion cmx --modalities rgb depth --num-classes 40 --head-channels 512
      rgbx measures 66.57 M parameters and 78.1 GMACs, of which 11.3 G are products of two activations
      (bmm: self-attention, CMX's cross-attention context); without them 66.8 GMACs, within ~1% of the published
      figure, which was therefore presumably counted by a layer-hook counter (thop, as in DFormer's
      benchmark.py, sees only layers) -- compare papers with the "MACs without bmm" row.
  CMX (MiT-B4) 139.9 M / 134.3 G, CMX (MiT-B5) 181.1 M / 167.8 G: --backbone mit_b4 / mit_b5, same flags
      (rgbx: 139.87 M and 181.07 M parameters).
FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over conv / linear / matmul kernels (not norms,
activations or resizing), with attention forced to its explicit form while counting. Latency depends on the
machine, the thread count (on a busy CPU try --threads 1) and the torch build: compare it on one machine only.
"""


def add_parser(sub) -> None:
    p = add_command(sub, "profile", "count parameters and FLOPs, time inference",
                    "Build a model (from the model section of a YAML config / preset, or from flags; flags override "
                    "the config) with random weights and report parameters (per submodule), forward FLOPs and MACs "
                    "at batch 1, latency at batch 1 and throughput at the largest --batch.",
                    EXAMPLES, run)
    add_model_arguments(p)
    p.add_argument("--size", type=parse_size, default=(480, 640), metavar="HxW",
                   help="input size (default 480x640, NYU Depth V2)")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8], metavar="N",
                   help="batch sizes to time (default 1 8): latency at 1, throughput at the largest")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed passes per batch size (default 10)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed passes per batch size (default 3)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the full result as JSON here")


def _fmt_ms(t: dict) -> str:
    return f"{t['median_ms']:.1f} (min {t['min_ms']:.1f}, max {t['max_ms']:.1f})"


def print_profile(result: dict, title: str) -> None:
    """Print the result of :func:`rgbx.engine.profile.profile_model` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title, show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value")
    params, flops = result["params"], result["flops"]
    table.add_row("input", ", ".join(f"{m} {'x'.join(map(str, s))}" for m, s in result["input_shapes"].items()))
    table.add_row("parameters", f"{params['total'] / 1e6:.2f} M (trainable {params['trainable'] / 1e6:.2f} M)")
    table.add_row("FLOPs (batch 1)", f"{flops['gflops']:.2f} GFLOPs (FlopCounterMode: multiply-add = 2)")
    table.add_row("MACs (batch 1)", f"{flops['gmacs']:.2f} GMACs (the unit of papers' \"GFLOPs\")")
    bmm = flops.get("by_op", {}).get("bmm", 0.0) / 2
    if bmm:
        table.add_row("MACs without bmm", f"{flops['gmacs'] - bmm:.2f} GMACs (layers only, as thop counts: no "
                      "attention / NMF products)")
    if not flops["attn_forced_eager"]:
        table.add_row("", "[yellow]attention could not be forced eager: SDPA kernels may be uncounted[/yellow]")
    for t in result["timings"]:
        table.add_row(f"latency, batch {t['batch']} (ms)", _fmt_ms(t))
        table.add_row(f"throughput, batch {t['batch']}", f"{t['images_per_s']:.1f} images/s")
        if t["peak_memory_mb"] is not None:
            table.add_row(f"peak memory, batch {t['batch']}", f"{t['peak_memory_mb']:.0f} MiB")
    table.add_row("device", f"{result['device']} ({result['device_name']})")
    table.add_row("torch / threads", f"{result['torch']} / {result['threads']}")
    table.add_row("timing", f"{result['warmup']} warm-up + {result['repeats']} timed passes per batch size, "
                  f"attention {', '.join(result['attn_impl'] or ['-'])}")
    console.print(table)

    parts = Table(title="parameters and FLOPs by submodule")
    for col in ("module", "params (M)", "share", "GMACs"):
        parts.add_column(col, justify="left" if col == "module" else "right")
    macs = {k: v / 2 for k, v in flops["by_module"].items()}
    sub_macs = {k: v / 2 for k, v in flops["by_submodule"].items()}

    def gmacs(table: dict, key: str) -> str:  # three significant digits below 1 (tiny models, small inputs)
        if key not in table:
            return ""
        return f"{table[key]:.2f}" if table[key] >= 1 else f"{table[key]:.3g}"

    for name, n in params["by_module"].items():
        parts.add_row(f"[bold]{name}[/bold]", f"{n / 1e6:.3f}", f"{n / max(params['total'], 1):.1%}",
                      gmacs(macs, name))
        for sub, m in params["by_submodule"].items():
            if sub.startswith(f"{name}."):
                parts.add_row(f"  {sub}", f"{m / 1e6:.3f}", f"{m / max(params['total'], 1):.1%}",
                              gmacs(sub_macs, sub))
    console.print(parts)


def run(args) -> int:
    import torch

    from rgbx.engine.profile import profile_model
    from rgbx.errors import ConfigError
    from rgbx.modalities import get_modality
    from rgbx.models import create_model

    if args.repeats < 1 or args.warmup < 0 or min(args.batch) < 1 or min(args.size) < 1:
        raise ConfigError("--repeats and --batch must be >= 1, --warmup >= 0, --size positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = model_config_from_args(args)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = create_model(config)
    h, w = args.size
    inputs = {m: torch.randn(1, get_modality(m).channels, h, w) for m in config.modalities}
    result = profile_model(model, inputs, device=device, warmup=args.warmup, repeats=args.repeats,
                           batch_sizes=args.batch)
    result["model"] = config.to_dict()
    title = (f"{config.backbone} + {config.fusion} + {config.head} ({config.head_channels} ch), "
             f"{'+'.join(config.modalities)}, {config.num_classes} classes, {h}x{w}")
    print_profile(result, title)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0
