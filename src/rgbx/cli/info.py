"""``rgbx info``: what is registered (modalities, encodings, backbones, fusions, heads, methods, presets)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from rgbx.cli.common import add_command


def add_parser(sub) -> None:
    add_command(sub, "info", "list registered modalities, models, methods and config presets",
                "List everything registered in rgbx.", "  rgbx info\n", run)


def run(args) -> int:
    from rgbx.data import DATASETS
    from rgbx.engine.config import list_presets
    from rgbx.methods import METHODS
    from rgbx.modalities import ENCODINGS, MODALITIES, get_modality
    from rgbx.models import list_models

    # piped output (no terminal width to follow): wide enough that descriptions are not squeezed into a narrow column
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title="modalities")
    for col in ("name", "channels", "on disk", "unit", "sparse", "photometric augmentation", "description"):
        table.add_column(col)
    for name in MODALITIES.names():
        s = get_modality(name)
        table.add_row(name, str(s.channels), f"{s.encoding} {s.dtype} ×{s.scale:g}", s.unit, "yes" if s.sparse else "",
                      ", ".join(s.photometric), s.description)
    console.print(table)
    models = list_models()
    for kind, names in models.items():
        console.print(f"[bold]{kind}[/bold]: {', '.join(names)}")
    console.print(f"[bold]methods[/bold]: {', '.join(METHODS.names())}")
    console.print(f"[bold]datasets[/bold]: {', '.join(DATASETS.names())}")
    console.print(f"[bold]encodings[/bold]: {', '.join(ENCODINGS.names())}")
    console.print(f"[bold]config presets[/bold]: {', '.join(list_presets())}")
    return 0
