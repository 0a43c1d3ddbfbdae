"""Printing evaluation results: the anymodal table (rows = modality subsets, columns = all + per group) and the
per-class IoU table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rgbx.engine.evaluate import EvalResult, unscored_note
from rgbx.engine.report import wide_console


def _pct(v: float) -> str:
    return "—" if v != v else f"{100 * v:.2f}"


def anymodal_table(result: EvalResult, convention: str = "present", title: str | None = None) -> Table:
    metrics = result.metrics(convention)
    groups = result.groups
    from rich.text import Text

    table = Table(title=Text(title) if title else None,
                  caption=f"mIoU % ({convention} classes averaged; see rgbx eval --help)"
                          + unscored_note(result.unscored))
    table.add_column("modalities")
    for g in groups:
        table.add_column("mIoU" if g == "all" else g.split("=", 1)[-1], justify="right")
    table.add_column("pixel acc", justify="right")
    for subset, by_group in metrics.items():
        row = [subset] + [_pct(by_group[g].miou) if g in by_group else "—" for g in groups]
        row.append(_pct(by_group["all"].pixel_accuracy))
        table.add_row(*row)
    return table


def per_class_table(result: EvalResult, class_names: list[str], convention: str = "present") -> Table:
    metrics = result.metrics(convention)
    table = Table(title="per-class IoU %")
    table.add_column("class")
    for subset in metrics:
        table.add_column(subset, justify="right")
    for i, name in enumerate(class_names):
        table.add_row(name, *[_pct(metrics[s]["all"].per_class_iou[i]) for s in metrics])
    return table


def markdown_table(result: EvalResult, convention: str = "present") -> str:
    metrics = result.metrics(convention)
    groups = result.groups
    head = ["modalities"] + ["mIoU" if g == "all" else g.split("=", 1)[-1] for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for subset, by_group in metrics.items():
        lines.append("| " + " | ".join([subset] + [_pct(by_group[g].miou) if g in by_group else "—"
                                                   for g in groups]) + " |")
    return "\n".join(lines)


def confusion_table(matrix, class_names: list[str], title: str | None = None, top: int = 10) -> Table:
    """The ``top`` largest confusions of a :class:`~rgbx.engine.metrics.ConfusionMatrix`: true class, predicted
    class, share of the true class's pixels, pixels."""
    table = Table(title=title)
    for column in ("true class", "predicted as", "% of the true class", "pixels"):
        table.add_column(column, justify="right" if column in ("% of the true class", "pixels") else "left")
    for a, b, share, pixels in matrix.most_confused(top):
        table.add_row(class_names[a], class_names[b], f"{100 * share:.2f}", str(pixels))
    return table


def calibration_table(result: EvalResult) -> Table:
    """Per sensor set: ECE, NLL, mean confidence and accuracy, and the accuracy / share of the pixels at or above
    each confidence threshold, uncalibrated and (for a calibrated model) calibrated."""
    calibration = result.calibration()
    table = Table(title="confidence calibration",
                  caption="ECE / MCE / accuracy / confidence in %, NLL in nats per pixel; ≥ p: accuracy of the "
                          "pixels whose confidence reaches p (share of pixels in brackets)")
    thresholds = next((m.coverage for kinds in calibration.values() for m in kinds.values()), [])
    for column in ("sensors", "confidences", "ECE", "MCE", "NLL", "confidence", "accuracy",
                   *(f"≥ {c['threshold']:g}" for c in thresholds)):
        table.add_column(column, justify="left" if column in ("sensors", "confidences") else "right")
    for subset, kinds in calibration.items():
        for kind, m in kinds.items():
            cells = [f"{_pct(c['accuracy']) if c['accuracy'] is not None else '—'} ({100 * c['coverage']:.0f})"
                     for c in m.coverage]
            table.add_row(subset, kind, _pct(m.ece), _pct(m.mce), f"{m.nll:.4f}", _pct(m.confidence),
                          _pct(m.accuracy), *cells)
    return table


def calibration_by_group_table(result: EvalResult) -> Table:
    """The ECE of each sensor set (uncalibrated / calibrated) in each group, as the anymodal table's columns."""
    groups = result.groups
    table = Table(title="confidence calibration by group", caption="ECE % (15 bins)")
    table.add_column("sensors")
    table.add_column("confidences")
    for g in groups:
        table.add_column("all" if g == "all" else g.split("=", 1)[-1], justify="right")
    for subset, by_group in result.reliability.items():
        for kind in by_group.get("all", {}):
            table.add_row(subset, kind, *[_pct(by_group[g][kind].compute().ece) if kind in by_group.get(g, {})
                                          else "—" for g in groups])
    return table


def print_eval_tables(result: EvalResult, class_names: list[str], convention: str = "present",
                      per_class: bool = False, title: str | None = None, console: Console | None = None) -> None:
    console = console or wide_console()
    console.print(anymodal_table(result, convention, title))
    if per_class:
        console.print(per_class_table(result, class_names, convention))
    if result.reliability:
        console.print(calibration_table(result))
        if len(result.groups) > 1:
            console.print(calibration_by_group_table(result))
