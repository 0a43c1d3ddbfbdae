"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse

EPILOG_FORMATTER = argparse.RawDescriptionHelpFormatter


def add_command(sub, name: str, help: str, description: str, examples: str, run) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                            formatter_class=EPILOG_FORMATTER)
    parser.set_defaults(run=run)
    return parser


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 240x320, got {text!r}") from None
    return h, w
