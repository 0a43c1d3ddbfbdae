"""Sensor health: telling a failed sensor's frames from a working one's, so that a model trained for any subset of
sensors is given the sensors that work and told that the others are absent.

A sensor seldom fails by going quiet. Its driver keeps delivering frames, but they are black, empty, saturated, NaN
or the same frame again. Fed to a model trained for missing sensors as if they were measurements, they cost more
than the sensor being absent (``benchmarks/sensor_failures.md``; a model that always saw every sensor may do better
with them). Each check looks at one frame in physical units (the last, over the stream):

``non_finite``
    the fraction of NaN / ±inf values is above ``max_non_finite``. Such values are replaced by the sensor's "no
    measurement" value in every frame, failed or not: one NaN spreads through every convolution to the whole
    prediction.
``no_signal``
    a sensor with a "no measurement" value or a sparse one (depth, LiDAR, events): the fraction of pixels holding a
    measurement is at most ``min_coverage``; for a dense one (depth) also when its measurements all hold one value
    (standard deviation below ``min_measured_contrast`` × the spec's std: 1 mm for depth; a live sensor's noise is
    larger even on a flat wall). A dense sensor without one (RGB, thermal, NIR, HHA, ...): every channel's standard
    deviation over the frame is below ``min_contrast`` × the spec's normalisation std (a black, white or uniform
    frame: lens cap, unplugged video, dead sensor).
``saturated``
    dense sensors without a "no measurement" value: more than ``max_saturated`` of the pixels sit at the bottom or
    the top of the spec's ``display_range`` in every channel (a blinded camera, a pegged thermal camera).
``frozen``
    the frame equals the sensor's previous frame (largest difference ≤ ``frozen_tolerance``) ``frozen_after`` times
    in a row: a stuck driver re-sending its last frame. Needs a stream: :class:`SensorMonitor` keeps each sensor's
    last frame. A real sensor's noise makes two live frames differ; a loop that reads a slower sensor more often than
    it delivers sees repeats legitimately: raise ``frozen_after`` for that sensor.
``stale``
    given the frames' timestamps (seconds, as the drivers stamp them): the frame is more than ``max_age`` older than
    the newest frame of the step (or than ``now``): a driver handing out its last buffer while the sensor is gone.
    Off unless ``max_age`` is set.

:func:`frame_statistics` computes the figures for a batch at once; :func:`failed_checks` applies the rules to them;
:class:`SensorMonitor` screens one frame of every sensor, keeping the stream's state (``rgbx.Predictor(monitor=)``,
``rgbx predict --check-sensors``); :func:`screen_frames` checks a batch of samples that are not a stream (``rgbx eval
--robustness``); :class:`FrameScreen` leaves failed sensors out of a dataset's samples (``data.screen_sensors``,
``rgbx eval --check-sensors``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rgbx.data.transforms.photometric import empty_value
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality
from rgbx.modalities.spec import ModalitySpec

CHECKS = ("non_finite", "no_signal", "saturated", "frozen")


@dataclass(frozen=True)
class HealthRules:
    """Thresholds of the checks (module docstring). ``min_coverage=None``: 0.01 for a dense sensor with a "no
    measurement" value (depth: at most 1 % of the pixels measured fails), 0 for a sparse one (LiDAR, events: not one
    return fails; a static scene and a dead event camera look alike, and either carries nothing)."""

    max_non_finite: float = 0.5
    min_coverage: float | None = None
    min_contrast: float = 0.01
    min_measured_contrast: float = 1e-4
    max_saturated: float = 0.95
    frozen_after: int = 3
    frozen_tolerance: float = 0.0
    max_age: float | None = None  # seconds; the stale check is off without it

    def coverage_floor(self, spec: ModalitySpec) -> float:
        if self.min_coverage is not None:
            return self.min_coverage
        return 0.0 if spec.sparse else 0.01


def has_empty_value(spec: ModalitySpec) -> bool:
    """True for sensors whose pixels may hold "no measurement" (an ``invalid_value`` or a sparse map)."""
    return spec.invalid_value is not None or spec.sparse


def parse_rules(items, base: HealthRules | None = None) -> tuple[HealthRules, dict[str, HealthRules]]:
    """``["frozen_after=5", "depth.min_coverage=0.05"]`` → (rules for every sensor, per-sensor rules).

    A key without a sensor sets every sensor's rule; ``SENSOR.KEY`` one sensor's (over the common ones, whatever the
    order). Errors name the item and what was expected."""
    fields = {f.name: f for f in dataclasses.fields(HealthRules)}
    common: dict[str, object] = {}
    per: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep:
            raise ConfigError(f"sensor rule {item!r}: expected KEY=VALUE or SENSOR.KEY=VALUE, e.g. "
                              "frozen_after=5 or depth.min_coverage=0.05")
        sensor, _, name = key.strip().rpartition(".")
        if name not in fields:
            raise ConfigError(f"sensor rule {item!r}: unknown key {name!r}; expected one of {', '.join(fields)}")
        if sensor:
            get_modality(sensor)  # an unknown sensor → the registry's error
        kind = int if name == "frozen_after" else float  # max_age: seconds
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"sensor rule {item!r}: {name} takes {'an integer' if kind is int else 'a number'}, "
                              f"got {raw!r}") from None
        if value < 0 or (name == "frozen_after" and value < 1):
            raise ConfigError(f"sensor rule {item!r}: {name} must be {'>= 1' if name == 'frozen_after' else '>= 0'}")
        (per.setdefault(sensor, {}) if sensor else common)[name] = value
    base = dataclasses.replace(base or HealthRules(), **common)
    return base, {s: dataclasses.replace(base, **values) for s, values in per.items()}


# ---------------------------------------------------------------------------------------------------------------
# one batch of frames


# contrast and the saturated share are estimated on a grid of every k-th pixel in each direction, about this many
# pixels (exact for frames up to twice as large; 480×640: every 4th); coverage and NaN count every pixel
SAMPLED_PIXELS = 16384


def replace_non_finite(x: torch.Tensor, spec: ModalitySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with NaN / ±inf set to the spec's "no measurement" value, (B,) fraction of such values per frame) for
    ``x`` (B, C, H, W) in physical units."""
    if bool(torch.isfinite(x.flatten(1).sum(1)).all()):  # one pass: a finite sum has no NaN / inf in it
        return x, torch.zeros(x.shape[0], device=x.device)
    finite = torch.isfinite(x)
    fraction = (~finite).flatten(1).float().mean(1)
    return torch.where(finite, x, torch.full_like(x, empty_value(spec))), fraction


def _grid(x: torch.Tensor) -> torch.Tensor:
    """Every k-th pixel of ``x`` (..., H, W) in each direction, about :data:`SAMPLED_PIXELS` of them."""
    step = max(1, int((x.shape[-2] * x.shape[-1] / SAMPLED_PIXELS) ** 0.5))
    return x[..., ::step, ::step]


def _statistics(x: torch.Tensor, spec: ModalitySpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(``x`` with non-finite values replaced, :func:`frame_statistics`)."""
    x, non_finite = replace_non_finite(x.float(), spec)
    b = x.shape[0]
    grid = _grid(x)
    if has_empty_value(spec):
        coverage = (x != empty_value(spec)).any(1).flatten(1).float().mean(1)
        if bool(((grid != empty_value(spec)).any(1).flatten(1).sum(1) < 2).any()):
            grid = x  # the grid missed a sparse frame's measurements: every pixel then
        values = grid.flatten(2)  # (B, C, N)
        measured = (grid != empty_value(spec)).any(1).flatten(1)[:, None].float()  # (B, 1, N)
        count = measured.sum(2).clamp(min=1)
        mean = (values * measured).sum(2, keepdim=True) / count[..., None]
        spread = (((values - mean) ** 2 * measured).sum(2) / count).sqrt()  # (B, C), over measured pixels
    else:
        coverage = torch.ones(b, device=x.device)
        spread = grid.flatten(2).std(2, correction=0)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).expand(x.shape[1])
    contrast = (spread / std).amin(1)
    if spec.display_range is not None and not has_empty_value(spec):  # (where no measurement is a value, the
        lo, hi = spec.display_range                                     # checks read coverage instead)
        eps = 1e-3 * (hi - lo)
        at_end = (grid <= lo + eps).all(1) | (grid >= hi - eps).all(1)
        saturated = at_end.flatten(1).float().mean(1)
    else:
        saturated = torch.zeros(b, device=x.device)
    return x, {"non_finite": non_finite, "coverage": coverage, "contrast": contrast, "saturated": saturated}


def frame_statistics(x: torch.Tensor, spec: ModalitySpec) -> dict[str, torch.Tensor]:
    """The figures the checks read, each (B,), for ``x`` (B, C, H, W) in physical units (non-finite values allowed):
    ``non_finite`` (fraction of values), ``coverage`` (fraction of pixels holding a measurement; 1 for a dense
    sensor without a "no measurement" value), ``contrast`` (the smallest over channels of std / the spec's std; over
    the measured pixels for a sensor with a "no measurement" value, 0 with none), ``saturated`` (fraction of pixels
    at the bottom or the top of the display range in every channel; 0 without a display range, and for a sensor
    with a "no measurement" value, whose empty pixels sit at the bottom: not checked there). Contrast and the
    saturated share are estimated on a grid of :data:`SAMPLED_PIXELS` pixels."""
    return _statistics(x, spec)[1]


def failed_checks(stats: Mapping[str, torch.Tensor], spec: ModalitySpec, rules: HealthRules) -> dict[str, torch.Tensor]:
    """Check name → (B,) bool (True = failed) for the stateless checks, from :func:`frame_statistics`."""
    if has_empty_value(spec):
        no_signal = stats["coverage"] <= rules.coverage_floor(spec)
        if not spec.sparse:  # sparse counts (events) legitimately hold one value at their few measured pixels
            no_signal |= stats["contrast"] < rules.min_measured_contrast
        saturated = torch.zeros_like(no_signal)
    else:
        no_signal = stats["contrast"] < rules.min_contrast
        saturated = stats["saturated"] > rules.max_saturated
    return {"non_finite": stats["non_finite"] > rules.max_non_finite, "no_signal": no_signal, "saturated": saturated}


# ---------------------------------------------------------------------------------------------------------------
# a stream of frames


@dataclass(frozen=True)
class SensorStatus:
    """One sensor's frame judged: ``failures`` names the failed checks (empty: healthy), with the figures read."""

    sensor: str
    failures: tuple[str, ...]
    non_finite: float
    coverage: float
    contrast: float
    saturated: float
    repeats: int  # how many times in a row the frame repeated the sensor's previous one
    age: float | None = None  # seconds behind the step's newest frame (or ``now``), when timestamps were given

    @property
    def ok(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        """e.g. ``depth: no_signal (0.0% of pixels measured)``."""
        if self.ok:
            return f"{self.sensor}: ok"
        why = {"non_finite": f"{100 * self.non_finite:.1f}% NaN/inf",
               "no_signal": (f"{100 * self.coverage:.1f}% of pixels measured, contrast {self.contrast:.2g} of the "
                             f"normal std" if has_empty_value(get_modality(self.sensor))
                             else f"contrast {self.contrast:.2g} of the normal std"),
               "saturated": f"{100 * self.saturated:.1f}% of pixels at the end of the range",
               "frozen": f"the same frame {self.repeats + 1} times in a row",
               "stale": f"{self.age:.3f} s old" if self.age is not None else "old"}
        return f"{self.sensor}: " + ", ".join(f"{f} ({why[f]})" for f in self.failures)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "failures": list(self.failures), "ok": self.ok}


class SensorFailure(DataError):
    """Every sensor of a frame failed its checks: there is nothing to predict from."""

    def __init__(self, statuses: Mapping[str, SensorStatus], frame: str = "frame"):
        self.statuses = dict(statuses)
        super().__init__(f"{frame}: every sensor failed its health checks: "
                         + "; ".join(s.describe() for s in self.statuses.values()))


class SensorMonitor:
    """Screens the frames of a stream, one call per time step: failed sensors are left out (the model treats them as
    absent), non-finite values are replaced, and each sensor's last frame is kept for the ``frozen`` check.

    Args:
        rules: thresholds for every sensor (:class:`HealthRules`).
        per_sensor: sensor name → its own thresholds.

    Example::

        monitor = SensorMonitor(per_sensor={"lidar": HealthRules(frozen_after=6)})  # LiDAR at 5 Hz, loop at 30 Hz
        healthy, statuses = monitor.screen({"rgb": rgb, "depth": depth})  # (C, H, W) physical units each
    """

    def __init__(self, rules: HealthRules | None = None, per_sensor: Mapping[str, HealthRules] | None = None):
        self.rules = rules or HealthRules()
        self.per_sensor = dict(per_sensor or {})
        self._last: dict[str, torch.Tensor] = {}
        self._repeats: dict[str, int] = {}

    def rules_for(self, sensor: str) -> HealthRules:
        return self.per_sensor.get(sensor, self.rules)

    def reset(self) -> None:
        """Forget the stream (a new sequence starts)."""
        self._last.clear()
        self._repeats.clear()

    def _repeat_count(self, sensor: str, x: torch.Tensor, tolerance: float) -> int:
        last = self._last.get(sensor)
        same = last is not None and last.shape == x.shape and bool(
            torch.equal(last, x) if tolerance == 0 else (last - x).abs().max() <= tolerance)
        self._repeats[sensor] = self._repeats.get(sensor, 0) + 1 if same else 0
        self._last[sensor] = x.detach().clone()
        return self._repeats[sensor]

    def check(self, sensor: str, x: torch.Tensor, age: float | None = None) -> tuple[torch.Tensor, SensorStatus]:
        """(``x`` with non-finite values replaced, its status) for one (C, H, W) frame in physical units, ``age``
        seconds older than the newest frame of its step (None: unknown)."""
        spec = get_modality(sensor)
        rules = self.rules_for(sensor)
        clean, stats = _statistics(x[None], spec)
        clean = clean[0]
        failed = failed_checks(stats, spec, rules)
        repeats = self._repeat_count(sensor, clean, rules.frozen_tolerance)
        names = [c for c in ("non_finite", "no_signal", "saturated") if bool(failed[c][0])]
        if repeats >= rules.frozen_after:
            names.append("frozen")
        if age is not None and rules.max_age is not None and age > rules.max_age:
            names.append("stale")
        status = SensorStatus(sensor, tuple(names), *(float(stats[k][0]) for k in
                                                      ("non_finite", "coverage", "contrast", "saturated")), repeats,
                              age)
        return clean, status

    def screen(self, inputs: Mapping[str, torch.Tensor], stamps: Mapping[str, float] | None = None,
               now: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, SensorStatus]]:
        """(the healthy sensors' frames, cleaned; every sensor's status) for one time step's frames, sensor name →
        (C, H, W) physical units. ``stamps``: sensor name → the frame's timestamp in seconds, for the ``stale`` check
        against the newest of them, or against ``now``."""
        stamps = dict(stamps or {})
        unknown = sorted(set(stamps) - set(inputs))
        if unknown:
            raise DataError(f"timestamps for {', '.join(unknown)}, which sent no frame in this step")
        reference = now if now is not None else max(stamps.values(), default=None)
        healthy, statuses = {}, {}
        for sensor, x in inputs.items():
            age = reference - float(stamps[sensor]) if sensor in stamps and reference is not None else None
            clean, status = self.check(sensor, x, age)
            statuses[sensor] = status
            if status.ok:
                healthy[sensor] = clean
        return healthy, statuses


def screen_frames(x: torch.Tensor, spec: ModalitySpec, rules: HealthRules, previous: torch.Tensor | None = None,
                  has_previous: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The checks on a batch of frames that are not a stream (an evaluation's samples): (``x`` with non-finite values
    replaced, check name → (B,) bool failed) for ``x`` (B, C, H, W) in physical units. ``frozen`` compares each
    frame with ``previous`` (B, C, H, W; e.g. each sample's predecessor): equal there means the sensor is taken to
    have repeated that frame ``frozen_after`` times; without ``previous`` no frame is frozen, nor those where
    ``has_previous`` (B,) bool is False."""
    clean, stats = _statistics(x, spec)
    failed = failed_checks(stats, spec, rules)
    if previous is None or previous.shape != clean.shape:
        failed["frozen"] = torch.zeros_like(failed["no_signal"])
    else:
        before, _ = replace_non_finite(previous.float(), spec)
        failed["frozen"] = (clean - before).abs().flatten(1).amax(1) <= rules.frozen_tolerance
        if has_previous is not None:
            failed["frozen"] &= has_previous.to(failed["frozen"].device)
    return clean, failed


class FrameScreen:
    """Leaves out of a dataset sample the sensors whose frame fails the checks of one frame (``non_finite``,
    ``no_signal``, ``saturated``; not ``frozen``: a training set is read in random order), so that training on a rig's
    recordings counts a failed sensor's frames (a black camera at start-up, a depth camera's empty frames) as the
    sensor absent, as a deployed :class:`SensorMonitor` (``rgbx predict --check-sensors``) treats them. A sample
    whose every sensor fails is left as it is. Set as a dataset's ``screen`` (``data.screen_sensors``).

    ``sample["meta"]["screened"]`` lists the sensors left out."""

    def __init__(self, rules: HealthRules | None = None, per_sensor: Mapping[str, HealthRules] | None = None):
        self.rules = rules or HealthRules()
        self.per_sensor = dict(per_sensor or {})

    def __call__(self, sample: dict) -> dict:
        inputs, checked = sample["inputs"], {}
        for m, x in inputs.items():  # the checks of one frame; no predecessor, so never frozen
            clean, failed = screen_frames(x[None], get_modality(m), self.per_sensor.get(m, self.rules))
            checked[m] = (clean[0], any(bool(f[0]) for f in failed.values()))
        out = [m for m, (_, failed) in checked.items() if failed]
        if not out or len(out) == len(inputs):
            return sample
        kept = {m: clean for m, (clean, failed) in checked.items() if not failed}
        return {**sample, "inputs": kept, "meta": {**sample.get("meta", {}), "screened": out}}
