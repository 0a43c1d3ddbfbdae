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


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="folder",
                        help="dataset format (rgbx info lists them; default: the rgbx folder format)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a dataset option (repeatable), e.g. --option conditions=[night,fog]")


def parse_options(items: list[str]) -> dict:
    """``key=value`` strings → dict; values parsed as YAML (numbers, lists, booleans)."""
    import yaml

    from rgbx.errors import ConfigError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options
