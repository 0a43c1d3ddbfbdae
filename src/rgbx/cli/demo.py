"""``rgbx demo``: the whole product in 5–10 minutes on a 2-core CPU.

Synthesises a small multi-modal dataset, trains a small fusion model with modality dropout, prints the anymodal table
broken down by condition (the fused model against its own RGB-only subset at night and in fog), and writes a few
prediction panels.
"""

from __future__ import annotations

from pathlib import Path

from rgbx.cli.common import add_command, non_negative_int, parse_size, positive_int

EXAMPLES = """  rgbx demo                              # 5-10 minutes on 2 CPU cores; writes runs/demo
  rgbx demo --out /tmp/demo --iters 300  # shorter
"""


def add_parser(sub) -> None:
    p = add_command(sub, "demo", "synthesise data, train a small model, print the anymodal table",
                    "Run the whole pipeline on the built-in synthetic data (no download).", EXAMPLES, run)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (a new one if it exists)")
    p.add_argument("--train", type=positive_int, default=600, help="training samples to synthesise")
    p.add_argument("--val", type=positive_int, default=150, help="validation samples to synthesise")
    p.add_argument("--size", type=parse_size, default=(120, 160), help="synthesised image size HxW")
    p.add_argument("--iters", type=positive_int, default=None, help="training iterations (default: the demo preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--panels", type=non_negative_int, default=4, help="prediction panels to write")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo training config")


def _fresh(path: Path) -> Path:
    if not path.exists():
        return path
    i = 2
    while Path(f"{path}-{i}").exists():
        i += 1
    return Path(f"{path}-{i}")


def run(args) -> int:
    import torch
    from rich.markup import escape

    from rgbx.data import FolderDataset, collate
    from rgbx.data.synth import generate
    from rgbx.data.transforms import EvalTransform
    from rgbx.engine.config import load_config
    from rgbx.engine.evaluate import all_subsets, evaluate
    from rgbx.engine.predict import Predictor
    from rgbx.engine.report import Reporter
    from rgbx.engine.tables import anymodal_table, markdown_table
    from rgbx.engine.trainer import Trainer

    out = _fresh(args.out)
    reporter = Reporter()
    data_dir = out / "data"
    total = args.train + args.val
    reporter.print(f"[bold]1/4[/bold] synthesising {total} samples at {args.size[0]}x{args.size[1]} into "
                   f"{escape(str(data_dir))}", markup=True)
    with reporter.progress(total, 0, "synth") as bar:
        generate(data_dir, splits={"train": args.train, "val": args.val}, size=args.size, seed=args.seed,
                 progress=lambda done, _n: bar.update(done))

    overrides = [f"data.root={data_dir}", f"output_dir={out / 'run'}", f"train.seed={args.seed}",
                 f"data.crop_size=[{args.size[0]},{args.size[1]}]"]
    if args.iters:
        overrides.append(f"train.iters={args.iters}")
    cfg = load_config("demo", [*overrides, *args.overrides])
    trainer = Trainer(cfg, reporter=reporter)
    n_params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    reporter.print(f"[bold]2/4[/bold] training {cfg.model.fusion}/{cfg.model.backbone} ({n_params:.2f} M params) on "
                   f"{'+'.join(cfg.model.modalities)} for {cfg.train.iters} iterations, modality dropout "
                   f"{cfg.method.modality_dropout}", markup=True)
    trainer.fit()

    reporter.print("[bold]3/4[/bold] anymodal evaluation on the validation split (every subset of sensors)",
                   markup=True)
    val = FolderDataset(data_dir, "val", list(cfg.model.modalities), transform=EvalTransform())

    loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=collate, num_workers=trainer.num_workers)
    result = evaluate(trainer.model, loader, num_classes=val.description.num_classes,
                      ignore_index=val.description.ignore_index, subsets=all_subsets(cfg.model.modalities),
                      group_by="condition", device=trainer.device)
    reporter.print(anymodal_table(result, title="anymodal mIoU % on the synthetic validation split"))
    metrics = result.metrics()
    fused, rgb = "+".join(cfg.model.modalities), "rgb"
    lines = []
    if rgb in metrics:
        for condition in ("night", "fog"):
            g = f"condition={condition}"
            if g in metrics[fused] and g in metrics[rgb]:
                f_, r_ = 100 * metrics[fused][g].miou, 100 * metrics[rgb][g].miou
                lines.append(f"{condition}: fused ({fused}) {f_:.2f} mIoU vs RGB only {r_:.2f} "
                             f"({f_ - r_:+.2f})")
    for line in lines:
        reporter.print(line)

    reporter.print(f"[bold]4/4[/bold] writing {args.panels} prediction panels to {escape(str(out / 'predictions'))}",
                   markup=True)
    predictor = Predictor(trainer.model, {"dataset": val.description.to_dict()}, trainer.device)
    for i in range(min(args.panels, len(val))):
        sample = val.load(i)
        predictor.write(sample, predictor.predict(sample), out / "predictions")
    (out / "results.md").write_text(
        f"# rgbx demo\n\nmodel: {cfg.model.fusion}/{cfg.model.backbone}, {cfg.train.iters} iterations\n\n"
        + markdown_table(result) + "\n\n" + "\n".join(f"- {x}" for x in lines) + "\n"
    )
    reporter.print(f"done: weights {trainer.paths.final_weights}, results {out / 'results.md'}")
    return 0
