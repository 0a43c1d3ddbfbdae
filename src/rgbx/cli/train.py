"""``rgbx train CONFIG [key=value ...]``: train a model from a YAML config or a built-in preset."""

from __future__ import annotations

import contextlib
import signal
import threading

from rgbx.cli.common import add_command
from rgbx.errors import Terminated

EXAMPLES = """  rgbx train synth_cmx_b0                                     # a built-in preset (rgbx info lists them)
  rgbx train my.yaml data.root=data/synth train.iters=500 model.fusion=mean
  rgbx train my.yaml --resume                                 # continue after a kill, from the last checkpoint
  rgbx train my.yaml --print-config                           # show the resolved config and exit
  rgbx train my.yaml train.init_from=runs/x/model.safetensors  # fine-tune from another trained model
  torchrun --nproc_per_node 4 -m rgbx.cli.main train my.yaml   # 4 GPUs (train.batch_size per GPU)
"""


def add_parser(sub) -> None:
    p = add_command(sub, "train", "train a model", "Train a model. CONFIG is a YAML file or a preset name; "
                    "key=value pairs override any config key (dotted path).", EXAMPLES, run)
    p.add_argument("config", help="YAML config file or built-in preset name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.iters=100")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="print only errors")


@contextlib.contextmanager
def stop_signals(interrupts):
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler pre-empting the job) stop training at the end of the step running,
    where the trainer saves a checkpoint (:meth:`Trainer.save_on_stop`), instead of SIGTERM killing the process
    without a word: both are handed to ``interrupts`` (:class:`~rgbx.engine.interruption.InterruptHold`), SIGTERM as
    :class:`~rgbx.errors.Terminated`. SIGINT is left alone where it is ignored (a job started in the background).
    The previous handlers are put back after. Only in the main thread (signal handlers can be set nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGTERM: lambda signum, frame: interrupts.deliver(Terminated())}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handlers[signal.SIGINT] = lambda signum, frame: interrupts.deliver(KeyboardInterrupt())
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args) -> int:
    from rgbx.engine.config import load_config, to_yaml, validation_miou_convention
    from rgbx.engine.report import Reporter
    from rgbx.engine.trainer import Trainer

    cfg = load_config(args.config, args.overrides, resume=args.resume)
    # plugins given with --import (loaded already, by rgbx.cli.main) are part of the run: its config.yaml names them
    from rgbx.plugins import resolve_spec

    cfg.imports = list(dict.fromkeys([*cfg.imports, *(resolve_spec(s) for s in getattr(args, "plugin_imports", []))]))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    trainer = Trainer(cfg, resume=args.resume, reporter=Reporter(quiet=args.quiet))
    reporter = trainer.reporter  # silent on the ranks other than 0 of a torchrun launch
    try:
        world = f" × {trainer.dist.world_size} processes" if trainer.dist.enabled else ""
        reporter.print(f"training {trainer.model_cfg.fusion}/{trainer.model_cfg.backbone} on "
                       f"{'+'.join(trainer.model_cfg.modalities)} ({trainer.description.num_classes} classes, "
                       f"{sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f} M params) on "
                       f"{trainer.device}{world}; run folder {trainer.paths.root}")
        with stop_signals(trainer.interrupts):
            metrics = trainer.fit()
    except KeyboardInterrupt:
        state = trainer.paths.state
        if trainer.stop_checkpoint is not None:
            where = f"there (saved now: {state})"
        elif state.is_file():
            where = f"its last checkpoint ({state})"
        else:
            where = "the start: no checkpoint written yet (train.checkpoint_every)"
        reporter.print(f"stopped at iteration {trainer.iteration}; the same command with --resume continues from "
                       f"{where}", soft_wrap=True)
        raise
    finally:
        trainer.dist.close()
    full = "+".join(trainer.model_cfg.modalities)
    over = " (all classes)" if validation_miou_convention(cfg) == "all" else ""
    reporter.print(f"final val mIoU{over} {100 * metrics['subsets'][full]['all']['miou']:.2f}; weights: "
                   f"{trainer.paths.final_weights}")
    if cfg.published_evaluation:
        from rgbx.cli.evaluate import published_flags
        from rgbx.models.convert import REFERENCE_EVALUATION

        _, flags = REFERENCE_EVALUATION[cfg.published_evaluation]
        variant = " [multi-scale]" if published_flags(flags, multi_scale=True) is not None else ""
        reporter.print(f"scored as the authors' code scores it: rgbx eval {trainer.paths.final_weights} --data "
                       f"{cfg.data.root} --dataset {cfg.data.dataset} --as-published{variant}", soft_wrap=True)
    return 0
