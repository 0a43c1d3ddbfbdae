"""The ``rgbx`` command: one subcommand per module in this package.

User errors (:class:`~rgbx.errors.RgbxError`) are printed as one clear message and exit with status 2; a traceback
means a bug in rgbx (``RGBX_DEBUG=1`` shows tracebacks for user errors too).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from rgbx import __version__
from rgbx.errors import RgbxError, Terminated
from rgbx.plugins import load_plugins, prescan_imports

COMMANDS = ("synth", "train", "eval", "calibrate", "predict", "pseudo-label", "demo", "info", "data", "profile", "bench", "export",
            "convert", "embed-classes")

DESCRIPTION = """rgbx: multi-modal semantic segmentation (RGB + depth, thermal, LiDAR, events, ...) with any subset
of sensors.

examples:
  rgbx demo                                   # synthesise data, train, print the anymodal table (CPU, minutes)
  rgbx synth data/synth --train 800 --val 100 --test 100
  rgbx train synth_cmx_b0 data.root=data/synth train.iters=2000 output_dir=runs/cmx
  rgbx eval runs/cmx/model.safetensors --data data/synth --split test --anymodal --json eval.json
  rgbx calibrate runs/cmx/model.safetensors --data data/synth --split val   # confidences that mean what they say
  rgbx predict runs/cmx/model.safetensors data/synth --split test --out predictions/
  rgbx pseudo-label runs/cmx/model.safetensors --data data/rig --split raw --out data/rig-pseudo   # self-training
  rgbx data check data/synth
  rgbx info
  rgbx profile --backbone mit_b2 --fusion cmx --modalities rgb depth --num-classes 40 --head-channels 512
  rgbx bench --backbone mit_b2 --fusion cmx --modalities rgb depth --num-classes 40 --sweep
  rgbx export runs/cmx/model.safetensors --out cmx.onnx --check
  rgbx convert NYUDepthv2_CMX_B2.pth --backbone mit_b2 --fusion cmx --modalities rgb hha --num-classes 40 \\
      --head-channels 512 --out cmx_b2_nyu.safetensors
"""


def build_parser() -> argparse.ArgumentParser:
    from rgbx.cli import (
        bench,
        calibrate,
        convert,
        data,
        demo,
        embed,
        evaluate,
        export,
        info,
        predict,
        profile,
        pseudo_label,
        synth,
        train,
    )

    parser = argparse.ArgumentParser(prog="rgbx", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rgbx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (synth, train, evaluate, calibrate, predict, pseudo_label, demo, info, data, profile, bench, export,
                   convert, embed):
        module.add_parser(sub)
    _add_import_option(parser)
    return parser


IMPORT_HELP = ("import a plugin first: a module name or a .py file that registers your own backbones, fusions, "
               "heads, methods, losses, datasets or sensors (repeatable; docs/extending.md)")


def _add_import_option(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE_OR_FILE`` on every command. The values are read from the command line before the parser is
    built (:func:`rgbx.plugins.prescan_imports`); the option is declared so that it parses and ``--help`` shows it."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        parser.add_argument("--import", dest="plugin_imports", metavar="MODULE_OR_FILE", action="append",
                            default=argparse.SUPPRESS, help=IMPORT_HELP)
    for action in children:
        for child in dict.fromkeys(action.choices.values()):
            _add_import_option(child)


# the commands' trailing positional lists (key=value overrides, modality=PATH inputs), which may also come after flags
TRAILING_LISTS = ("overrides", "inputs")


def parse_intermixed(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with ``key=value`` items placed after a flag (``rgbx train CONFIG --resume a.b=1``)
    added to the command's trailing list, as if typed before it (argparse's own ``parse_intermixed_args`` refuses
    sub-commands). Anything else left over is argparse's usual error."""
    args, extras = parser.parse_known_args(argv)
    lists = [getattr(args, name) for name in TRAILING_LISTS if isinstance(getattr(args, name, None), list)]
    if extras and lists and all("=" in item and not item.startswith("-") for item in extras):
        lists[0].extend(extras)
        return args
    return parser.parse_args(argv) if extras else args


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def warning_formatter(command: str, default=warnings.formatwarning):
    """``warnings.formatwarning`` for a command: rgbx's own advice (a UserWarning raised in the package) as one line
    ``rgbx CMD: warning: ...`` like its errors; any other warning (torch's, a plugin's) as Python formats it."""
    def format_warning(message, category, filename, lineno, line=None):
        if category is UserWarning and Path(filename).resolve().is_relative_to(PACKAGE_DIR):
            return f"rgbx {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return format_warning


def main(argv: list[str] | None = None) -> int:
    command_line = list(sys.argv[1:] if argv is None else argv)
    imports = prescan_imports(command_line)
    if imports:  # the user's components are registered before the parser lists choices and builds defaults
        try:
            load_plugins(imports)
        except RgbxError as e:
            if os.environ.get("RGBX_DEBUG"):
                raise
            print(f"rgbx: error: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parse_intermixed(parser, argv)
    args.command_line = command_line  # what was typed (rgbx eval --as-published)
    formatwarning, warnings.formatwarning = warnings.formatwarning, warning_formatter(args.command)
    threads = _torch_threads()
    try:
        if getattr(args, "threads", None):  # --threads of any command: for the command only
            import torch

            torch.set_num_threads(args.threads)
        result = args.run(args)
    except RgbxError as e:
        if os.environ.get("RGBX_DEBUG"):
            raise
        print(f"rgbx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named that cannot be written or read (a folder, permissions, a full disk)
        if os.environ.get("RGBX_DEBUG") or e.filename is None:
            raise
        print(f"rgbx {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM where a command turns it into this (rgbx train)
        terminated = isinstance(e, Terminated)
        if os.environ.get("RANK", "0") == "0":  # once for a torchrun launch
            print(f"rgbx {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        warnings.formatwarning = formatwarning
        if threads is not None:  # --threads / train.threads hold for this command only, also when called in-process
            sys.modules["torch"].set_num_threads(threads)
    return int(result or 0)


def _torch_threads() -> int | None:
    """The caller's torch thread count, if torch is loaded (a command line loads torch itself: nothing to restore)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


if __name__ == "__main__":
    sys.exit(main())
