"""Robustness report: sensor failure, pixel dropout, sensor noise and silent failures, scored in one pass over a
loader.

Four sections: the first three after the MISS benchmark's Entire-Missing / Random-Missing / Noisy-modality protocol
(Liao et al. 2025) and the anymodal protocol of AnySeg (mean mIoU over every modality combination), the fourth rgbx's:

1. **Entire missing** (a sensor fails for the whole image): the mIoU of every non-empty subset of the model's
   modalities (the anymodal table of :func:`rgbx.engine.evaluate.evaluate`, same subset names), their plain
   **average** (mIoU^Avg: every subset weighted equally), and the **expected mIoU** when each sensor fails
   independently with probability ``p``::

       E_p[mIoU] = Σ_{S ≠ ∅} P(S) · mIoU(S) / Σ_{S ≠ ∅} P(S),   P(S) = Π_{m∈S} (1 − p) · Π_{m∉S} p

   The sum runs over non-empty subsets only (with every sensor down there is nothing to segment), so the weights are
   **renormalised** by ``Σ_{S≠∅} P(S) = 1 − p^M`` (M = number of modalities). ``p = 0`` gives the full-set mIoU,
   ``p = 0.5`` the plain average. The expectation is taken over the per-subset mIoUs (each computed from that
   subset's confusion matrix over the whole split), not over a mixture of confusion matrices.

2. **Random pixel dropout** (``dropout``): a fraction ``r`` of a modality's pixels (exactly ``round(r·H·W)``
   positions per image, all channels) is set to the modality's "no measurement" value in physical units — the spec's
   ``invalid_value`` (depth, LiDAR: 0 m), or 0 for a modality without one (sparse event counts: no event; dense
   camera images: black). Pixels are drawn over the whole image, so for a sparse map about ``r`` of its returns are
   removed. Applied to each modality in turn (the others clean) and to all modalities at once (target ``"all"``).

3. **Noise**, to each modality in turn:

   - ``gaussian``: additive zero-mean Gaussian noise, standard deviation ``k × spec.std`` per channel (a fraction of
     the modality's normalisation std, so ``k`` is the noise std in network-input units). For modalities with an
     invalid value or sparse modalities only measured pixels get noise (a missing return stays missing). No
     clipping.
   - ``salt_pepper``: a fraction ``f`` of the pixels (exact count, all channels of a pixel alike) is set, with
     equal chance, to the low ("pepper") or high ("salt") end of the modality's ``display_range`` in physical units
     (rgb: 0 / 1, depth: 0 m / 40 m); for a modality without a display range, to ``mean ∓ 3·std`` per channel.
   - ``misalignment`` (to each modality but the first, the one the labels are drawn in): the frame shifted by
     ``f·min(H, W)`` pixels in a random direction, the uncovered border "no measurement": extrinsic calibration
     drift between a sensor and the reference camera.

4. **Silent failures** (``SILENT_FAILURES``): a failed sensor that keeps sending frames — ``blank`` (its "no
   measurement" value everywhere), ``nan``, ``saturated`` (the top of its range), ``frozen`` (the previous sample's
   frame) — replacing one sensor's frames, scored fed to the model as they are, screened by the sensor checks of
   :mod:`rgbx.data.sensor_health` (every sensor's frames checked, a failed one left out, never every sensor of a
   sample) and with the sensor absent; with the share of failed frames the checks caught and of clean frames they
   failed.

With ``confidence=True`` every scored prediction also scores its per-pixel confidence
(:class:`~rgbx.engine.calibration.ReliabilityHistogram`: accuracy, mean confidence, ECE, NLL, accuracy of the pixels
above confidence thresholds), calibrated with ``temperatures`` when given, each sample with the temperature of the
sensors the model is told it has: the remaining set's when a sensor is absent or screened out, the full set's when
failed or corrupted frames are fed as they are (the model cannot tell). This answers whether the confidence warns a
downstream consumer when a sensor fails and nothing catches it: where accuracy falls and the confidence does not,
only the sensor checks can help.

All corruptions are applied in physical units (``spec.denormalize`` → corrupt → ``spec.normalize``), only to samples
that really have the modality (absent samples keep the fill value), and only with the model's full modality set as
input. Randomness is seeded per sample from ``(seed, corruption, target, strength, sample id, modality)`` with a
stable hash, so results do not depend on batch size, worker count or loader order. Every corrupted batch is
scored right after the clean subsets of the same batch (one pass over the loader).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rgbx.data.sample import Batch
from rgbx.data.sensor_health import SensorMonitor, screen_frames
from rgbx.data.transforms import empty_value
from rgbx.data.transforms.photometric import random_shift, shift_frame
from rgbx.engine.calibration import ReliabilityHistogram, TemperatureScaling
from rgbx.engine.evaluate import EvalResult, all_subsets, scored_samples, subset_name, unscored_note
from rgbx.engine.inference import CMX_NOT_PROBABILITIES, SlidingWindow, class_probabilities, predict_logits
from rgbx.engine.metrics import ConfusionMatrix
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality
from rgbx.modalities.spec import ModalitySpec

EXPECTED_DEFINITION = (
    "E_p[mIoU] = sum over non-empty subsets S of P(S)*mIoU(S), P(S) = prod_{m in S}(1-p) prod_{m not in S} p, "
    "renormalised over non-empty subsets (divided by 1 - p^M); computed from the per-subset mIoUs"
)

# ---------------------------------------------------------------------------------------------------------------
# corruptions: (x (C,H,W) physical units, strength, spec, generator) -> x (C,H,W) physical units

CorruptionFn = Callable[[torch.Tensor, float, ModalitySpec, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    name: str
    fn: CorruptionFn
    strengths: tuple[float, ...]
    strength_name: str
    definition: str
    all_at_once: bool = False  # also score the corruption applied to every modality together (target "all")
    # not applied to the model's first sensor: the frame the labels are drawn in, which the others are moved against
    not_reference: bool = False


def _pick_pixels(h: int, w: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """(H*W,) bool with exactly round(fraction·H·W) True positions, drawn uniformly."""
    n = h * w
    k = min(n, max(0, round(fraction * n)))
    pick = torch.zeros(n, dtype=torch.bool)
    pick[torch.randperm(n, generator=generator)[:k]] = True
    return pick


def measured_mask(x: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    """(H, W) bool: pixels holding a measurement (all True for a dense modality without an invalid value)."""
    if spec.invalid_value is None and not spec.sparse:
        return torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
    return (x != empty_value(spec)).any(dim=0)


def pixel_dropout(x: torch.Tensor, rate: float, spec: ModalitySpec, generator: torch.Generator) -> torch.Tensor:
    """Set ``round(rate·H·W)`` random pixels (all channels) to the spec's "no measurement" value (physical
    ``invalid_value``, else 0)."""
    h, w = x.shape[-2:]
    drop = _pick_pixels(h, w, rate, generator).view(h, w).to(x.device)
    return torch.where(drop[None], torch.full_like(x, empty_value(spec)), x)


def gaussian_noise(x: torch.Tensor, k: float, spec: ModalitySpec, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, (k·std_c)²) per channel c (``std`` = the spec's normalisation std) to the measured pixels."""
    std = torch.tensor(spec.std, dtype=x.dtype).view(-1, 1, 1)
    noise = (torch.randn(x.shape, generator=generator, dtype=x.dtype) * (k * std)).to(x.device)
    return torch.where(measured_mask(x, spec)[None], x + noise, x)


def salt_pepper_range(spec: ModalitySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) per channel, physical units: the display range, or mean ∓ 3·std without one."""
    if spec.display_range is not None:
        lo, hi = spec.display_range
        return torch.full((spec.channels,), float(lo)), torch.full((spec.channels,), float(hi))
    mean, std = torch.tensor(spec.mean, dtype=torch.float32), torch.tensor(spec.std, dtype=torch.float32)
    return mean - 3 * std, mean + 3 * std


def salt_pepper(x: torch.Tensor, fraction: float, spec: ModalitySpec, generator: torch.Generator) -> torch.Tensor:
    """Set ``round(fraction·H·W)`` random pixels to the low or high end (equal chance) of :func:`salt_pepper_range`."""
    h, w = x.shape[-2:]
    pick = _pick_pixels(h, w, fraction, generator).view(h, w)
    salt = torch.rand((h, w), generator=generator) < 0.5
    lo, hi = (v.to(dtype=x.dtype).view(-1, 1, 1) for v in salt_pepper_range(spec))
    value = torch.where(salt[None], hi, lo).to(x.device)
    return torch.where(pick.to(x.device)[None], value, x)


def misalignment(x: torch.Tensor, fraction: float, spec: ModalitySpec, generator: torch.Generator) -> torch.Tensor:
    """Shift the frame by ``fraction·min(H, W)`` pixels (rounded per axis) in a uniformly random direction, the
    uncovered border the spec's "no measurement" value: the extrinsic calibration between this sensor and the
    reference camera has drifted (a bumped mount, a LiDAR-camera offset; DeLiVER's LiDAR jitter)."""
    dy, dx = random_shift(generator, *x.shape[-2:], fraction)
    return shift_frame(x, dy, dx, empty_value(spec))


CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(corruption: Corruption) -> Corruption:
    if corruption.name in CORRUPTIONS:
        raise ValueError(f"corruption {corruption.name!r} is already registered")
    CORRUPTIONS[corruption.name] = corruption
    return corruption


register_corruption(Corruption(
    "dropout", pixel_dropout, (0.25, 0.5, 0.75), "rate",
    "fraction r of pixels set to the modality's 'no measurement' value (invalid_value, else 0) in physical units",
    all_at_once=True))
register_corruption(Corruption(
    "gaussian", gaussian_noise, (0.1, 0.25, 0.5), "std / normalisation std",
    "additive Gaussian noise, std = k * spec.std per channel, on measured pixels only, no clipping"))
register_corruption(Corruption(
    "salt_pepper", salt_pepper, (0.01, 0.05, 0.1), "fraction",
    "fraction f of pixels set to display_range min or max (equal chance), or mean -/+ 3 std without a display range"))
register_corruption(Corruption(
    "misalignment", misalignment, (0.01, 0.02, 0.05), "shift / shorter side",
    "the frame shifted by f * min(H, W) pixels in a random direction against the first sensor's (the labels' frame; "
    "not shifted itself), the uncovered border the 'no measurement' value: extrinsic calibration drift",
    not_reference=True))


# ---------------------------------------------------------------------------------------------------------------
# silent failures: the sensor keeps sending frames that carry nothing
# (x (B,C,H,W) physical units, previous (B,C,H,W): each sample's predecessor, spec) -> x (B,C,H,W) physical units

SilentFailureFn = Callable[[torch.Tensor, torch.Tensor, ModalitySpec], torch.Tensor]


def _blank(x: torch.Tensor, previous: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    return torch.full_like(x, empty_value(spec))


def _nan(x: torch.Tensor, previous: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def _saturated(x: torch.Tensor, previous: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    high = salt_pepper_range(spec)[1].to(x).view(1, -1, 1, 1)
    return high.expand_as(x).clone()


def _frozen(x: torch.Tensor, previous: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    return previous.clone()


SILENT_FAILURES: dict[str, tuple[SilentFailureFn, str]] = {
    "blank": (_blank, "every pixel the sensor's 'no measurement' value (invalid_value, else 0): a black camera, "
                      "a depth / LiDAR sensor with no return, an event camera with no event"),
    "nan": (_nan, "every value NaN (a driver marking a frame it could not fill)"),
    "saturated": (_saturated, "every pixel at the top of the display range (or mean + 3 std): a blinded camera, a "
                              "pegged sensor"),
    "frozen": (_frozen, "the previous sample's frame (the dataset's order in rgbx eval): a stuck driver re-sending an "
                        "old frame; the checks compare with that previous frame and take the stream to have repeated "
                        "it frozen_after times (a sample with no predecessor that has the sensor, the first one or one "
                        "after a sample without it, keeps its own frame, unchecked and not counted in 'detected')"),
}
NEEDS_PREVIOUS = frozenset({"frozen"})  # failures that only exist where the sample before has the sensor


def _resized(frame: torch.Tensor, size) -> torch.Tensor:
    if frame.shape[-2:] == tuple(size):
        return frame
    return torch.nn.functional.interpolate(frame[None], size=tuple(size), mode="nearest")[0]


def _given_previous(x: torch.Tensor, frames: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, C, H, W), (B,) bool) from one predecessor frame per sample (None: it has none; the sample's own frame
    stands in), each resized to the batch's size."""
    has = torch.tensor([f is not None for f in frames], device=x.device)
    return torch.stack([x[i] if f is None else _resized(f.to(x), x.shape[-2:]) for i, f in enumerate(frames)]), has


def _previous_frames(x: torch.Tensor, present: torch.Tensor,
                     carry: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, C, H, W) each sample's predecessor in loader order, (B,) bool it has the sensor). ``present``: (B,) the
    batch's samples that have it; ``carry``: the last frame of the batch before and whether that sample had it,
    resized to this batch's size; without it the first sample stands in for its own predecessor."""
    if carry is None:
        first, first_has = x[:1], torch.zeros(1, dtype=torch.bool, device=x.device)
    else:
        first, first_has = _resized(carry[0], x.shape[-2:])[None], carry[1].view(1).to(x.device)
    return torch.cat([first.to(x), x[:-1]]), torch.cat([first_has, present[:-1].to(x.device)])


# ---------------------------------------------------------------------------------------------------------------
# expected mIoU


def subset_probability(subset: Sequence[str], modalities: Sequence[str], p: float) -> float:
    """P(exactly the sensors in ``subset`` work) when each fails independently with probability ``p``."""
    inside = set(subset)
    return math.prod((1 - p) if m in inside else p for m in modalities)


def expected_miou(mious: dict[str, float], modalities: Sequence[str], p: float) -> float:
    """E_p[mIoU] over non-empty subsets, renormalised by ``1 - p^M`` (see the module docstring).

    Args:
        mious: subset name (``"rgb+depth"``, as :func:`~rgbx.engine.evaluate.subset_name`) → mIoU; every non-empty
            subset of ``modalities`` must be there (a ValueError names those that are not).
        p: independent failure probability of each sensor, ``0 <= p < 1``.
    """
    if not 0 <= p < 1:
        raise ValueError(f"failure probability p={p} must be in [0, 1)")
    lacking = [subset_name(s) for s in all_subsets(modalities) if subset_name(s) not in mious]
    if lacking:
        raise ValueError(f"expected mIoU needs every non-empty subset's mIoU; missing: {', '.join(lacking)}")
    total, norm = 0.0, 0.0
    for subset in all_subsets(modalities):
        w = subset_probability(subset, modalities, p)
        if w == 0:
            continue
        total += w * mious[subset_name(subset)]
        norm += w
    return total / norm


# ---------------------------------------------------------------------------------------------------------------
# the report


def _seed_for(seed: int, *parts) -> int:
    return zlib.crc32("/".join(str(p) for p in (seed, *parts)).encode()) & 0x7FFFFFFF


def corrupt_batch(batch: Batch, name: str, targets: Sequence[str], strength: float, *, seed: int = 0,
                  batch_index: int = 0) -> Batch:
    """A copy of ``batch`` with corruption ``name`` at ``strength`` applied to modalities ``targets``.

    Works on normalised inputs (denormalise → corrupt → normalise); samples that lack a modality are left as they
    are. Each sample's generator is seeded from ``seed``, the corruption, target list, strength, the sample's
    ``meta["id"]`` (or its position in the loader) and the modality, so the result is deterministic.
    """
    corruption = CORRUPTIONS[name]
    inputs = dict(batch.inputs)
    target_key = "+".join(targets)
    for m in targets:
        if m not in inputs:
            continue
        spec = get_modality(m)
        x = inputs[m]
        out = x.clone()
        for i in range(x.shape[0]):
            if not bool(batch.present[m][i]):
                continue
            meta = batch.meta[i] if i < len(batch.meta) else {}
            sid = meta.get("id", f"#{batch_index}:{i}")
            g = torch.Generator().manual_seed(_seed_for(seed, name, target_key, strength, sid, m))
            phys = spec.denormalize(x[i])
            out[i] = spec.normalize(corruption.fn(phys, float(strength), spec, g))
        inputs[m] = out
    return Batch(inputs, batch.present, batch.label, batch.meta)


def _all_reduced_sum(value) -> int:
    """``value`` summed over the processes of a distributed evaluation (itself otherwise)."""
    import torch.distributed as dist

    t = torch.as_tensor(value, dtype=torch.long)
    if dist.is_available() and dist.is_initialized():
        t = t.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
    return int(t)


def _miou(cm: ConfusionMatrix, convention: str) -> float:
    return cm.compute(convention).miou


def _num(v: float) -> float | None:
    return None if v != v else v


@torch.no_grad()
def robustness_report(
    model: torch.nn.Module,
    loader,
    *,
    num_classes: int,
    ignore_index: int = 255,
    device: str | torch.device = "cpu",
    seed: int = 0,
    probabilities: Sequence[float] = (0.2, 0.1, 0.05),
    strengths: Mapping[str, Sequence[float]] | None = None,
    corruptions: Sequence[str] | None = None,
    failures: Sequence[str] | None = None,
    monitor: SensorMonitor | None = None,
    previous: Callable[[dict], dict[str, torch.Tensor] | None] | None = None,
    convention: str = "present",
    class_names: list[str] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress=None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: SlidingWindow | None = None,
    scale_rule: str = "rgbx",
    confidence: bool = False,
    temperatures: TemperatureScaling | None = None,
) -> dict:
    """Entire-missing, random-dropout and noise robustness of ``model`` on ``loader``, in one pass.

    Args:
        probabilities: sensor failure probabilities ``p`` for the expected mIoU.
        strengths: corruption name → the strengths to score it at (default: each one's registered
            ``Corruption.strengths``; dropout 0.25 / 0.5 / 0.75, gaussian 0.1 / 0.25 / 0.5, salt_pepper 0.01 / 0.05
            / 0.1, misalignment 0.01 / 0.02 / 0.05).
        corruptions: names in :data:`CORRUPTIONS` to run (default: all).
        failures: names in :data:`SILENT_FAILURES` to run (default: all; ``()``: none). Each replaces one sensor's
            frames; the batch is scored fed as is, and screened by the sensor checks (every sensor's frames; a
            failed one left out) with the thresholds of ``monitor`` (default :class:`HealthRules`).
        previous: ``previous(meta) -> {modality: (C, H, W) physical frame}`` of the sample before the one ``meta``
            describes (None for the first), for ``frozen`` and the checks' ``frozen``; default: the sample before in
            the loader's order (``rgbx eval`` gives the dataset's order, the same under torchrun's shares).
        convention: mIoU convention (see :mod:`rgbx.engine.metrics`).
        progress: optional callable(batches_done).
        scales, flip, window, scale_rule: test-time averaging and sliding windows for every prediction
            (:func:`rgbx.engine.inference.predict_logits`).
        confidence: also score every prediction's confidence (module docstring), calibrated by ``temperatures``
            (a calibrated model's; None: the raw softmax).

    Returns:
        A JSON-ready dict: ``seed``, ``miou_convention``, ``modalities``, ``clean_miou`` (all sensors, no
        corruption), ``entire_missing`` (``subsets`` with full metrics, ``average``, ``expected`` keyed by ``p``,
        ``expected_definition``; ``unscored_samples`` per subset where samples had none of its sensors) and ``corruptions`` (per name: ``definition``, ``strength``, ``strengths``,
        ``miou`` as target → strength (str) → mIoU, ``mean`` per target) and ``silent_failures`` (``results`` as
        sensor → failure → ``as_is`` / ``screened`` mIoU and the fraction ``detected``; ``absent``: the mIoU without
        the sensor; ``false_alarms`` per sensor on the clean frames; ``rules``; ``definitions``) and, with
        ``confidence``, ``confidence``: ``calibrated``, ``temperatures`` and the same three sections keyed like the
        mIoUs, each figure a :class:`~rgbx.engine.calibration.CalibrationMetrics` dict without its bins.
    """
    if confidence and scale_rule == "cmx":
        raise ConfigError(CMX_NOT_PROBABILITIES)
    model.eval()
    device = torch.device(device)
    modalities = tuple(model.modalities)
    subsets = all_subsets(modalities)
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    for n in [*names, *(strengths or {})]:
        if n not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption {n!r}; registered: {', '.join(CORRUPTIONS)}")
    unused = [n for n in strengths or {} if n not in names]
    if unused:
        raise ConfigError(f"strengths given for {', '.join(unused)}, which is not scored here (corruptions: "
                          f"{', '.join(names) or 'none'})")
    strengths = {n: tuple(float(v) for v in (strengths or {}).get(n, CORRUPTIONS[n].strengths)) for n in names}
    for n, values in strengths.items():
        if not values or not all(v > 0 and math.isfinite(v) for v in values):
            raise ConfigError(f"strengths of {n}: expected one or more positive numbers, got {list(values)}")
    runs: list[tuple[str, str, tuple[str, ...], float]] = []  # (corruption, target name, modalities, strength)
    for n in names:
        c = CORRUPTIONS[n]
        targets = [(m, (m,)) for m in modalities if not (c.not_reference and m == modalities[0])]
        if c.all_at_once and len(modalities) > 1:
            targets.append(("all", modalities))
        for target, mods in targets:
            for s in strengths[n]:
                runs.append((n, target, mods, s))

    failure_names = list(SILENT_FAILURES) if failures is None else list(failures)
    for n in failure_names:
        if n not in SILENT_FAILURES:
            raise ValueError(f"unknown silent failure {n!r}; known: {', '.join(SILENT_FAILURES)}")
    monitor = monitor or SensorMonitor()
    specs = {m: get_modality(m) for m in modalities}
    rules = {m: monitor.rules_for(m) for m in modalities}
    silent = {(m, f, how): ConfusionMatrix(num_classes, ignore_index)
              for m in modalities for f in failure_names for how in ("as_is", "screened")}
    detected = {(m, f): torch.zeros(2, dtype=torch.long) for m in modalities for f in failure_names}  # hit, frames
    alarms = {m: dict.fromkeys(("frames", "any", "non_finite", "no_signal", "saturated", "frozen"), 0)
              for m in modalities}
    carry: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the last frame of the batch before, had it

    clean = EvalResult(num_classes, ignore_index)
    corrupted = {run[:2] + (run[3],): ConfusionMatrix(num_classes, ignore_index) for run in runs}
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    # the confidences of each scored case, keyed like the matrices: ("subset", name), ("corruption", name, target,
    # strength), ("silent", sensor, failure, how); made up front so that every process of a run reduces the same ones
    keys = [("subset", subset_name(s)) for s in subsets] + [("corruption", *k) for k in corrupted] \
        + [("silent", *k) for k in silent]
    hist = {k: ReliabilityHistogram(num_classes, ignore_index) for k in keys} if confidence else {}

    def predict(view: Batch, key: tuple | None = None, label: torch.Tensor | None = None) -> torch.Tensor:
        with amp:
            logits = predict_logits(model, view.inputs, view.present, scales, flip, window, scale_rule)
        if confidence and key is not None:  # the temperature of the sensors the model is told it has
            t = 1.0 if temperatures is None else temperatures.per_sample(view.present, modalities).to(device)
            with amp:
                probs = class_probabilities(model, view.inputs, view.present, scales, flip, window, scale_rule,
                                            temperature=t, scores=logits)
            hist[key].update(probs, label)
        return logits.argmax(1)

    for bi, batch in enumerate(loader):
        if batch.label is None:
            raise ValueError("robustness evaluation needs labelled data")
        batch = batch.to(device, non_blocking=True)
        for subset in subsets:  # a sample with none of the subset's sensors is not scored in its row
            view = batch.with_modalities(subset)
            name = subset_name(subset)
            scored = scored_samples(view, len(batch.label))
            if not scored.all():
                clean.unscored[name] = clean.unscored.get(name, 0) + int((~scored).sum())
            if scored.any():
                label = batch.label.masked_fill(~scored.to(device)[:, None, None], ignore_index)
                clean.matrix(name).update(predict(view, ("subset", name), label), label)
        # every sensor as a tensor (absent where no sample of the batch has it): the failure checks read each one
        full = batch.with_modalities(modalities).with_every(modalities)
        for n, target, mods, s in runs:
            view = corrupt_batch(full, n, mods, s, seed=seed, batch_index=bi)
            corrupted[(n, target, s)].update(predict(view, ("corruption", n, target, s), batch.label), batch.label)
        if failure_names:
            phys = {m: specs[m].denormalize(full.inputs[m]) for m in modalities}
            present = {m: full.present[m].bool() for m in modalities}
            if previous is None:
                before = {m: _previous_frames(phys[m], present[m], carry.get(m)) for m in modalities}
                carry = {m: (phys[m][-1], present[m][-1]) for m in modalities}
            else:
                frames = [previous(meta) or {} for meta in full.meta]
                before = {m: _given_previous(phys[m], [f.get(m) for f in frames]) for m in modalities}
            for m in modalities:  # false alarms: the checks on the clean frames
                _, failed = screen_frames(phys[m], specs[m], rules[m], *before[m])
                alarms[m]["frames"] += int(present[m].sum())
                alarms[m]["any"] += int((torch.stack(list(failed.values())).any(0) & present[m]).sum())
                for check, f in failed.items():
                    alarms[m][check] += int((f & present[m]).sum())
            for m in modalities:
                keep = present[m].view(-1, 1, 1, 1)
                for f in failure_names:
                    bad = torch.where(keep, SILENT_FAILURES[f][0](phys[m], before[m][0], specs[m]), phys[m])
                    as_is = full.replace(inputs={**full.inputs, m: specs[m].normalize(bad)})
                    silent[(m, f, "as_is")].update(predict(as_is, ("silent", m, f, "as_is"), batch.label), batch.label)
                    inputs, failed = dict(full.inputs), {}
                    for k in modalities:  # every sensor screened, as a deployed monitor would
                        cleaned, checks = screen_frames(bad if k == m else phys[k], specs[k], rules[k], *before[k])
                        if k == m:
                            inputs[k] = specs[k].normalize(cleaned)
                        failed[k] = torch.stack(list(checks.values())).any(0) & present[k]
                    nothing_left = torch.stack([failed[k] | ~present[k] for k in modalities]).all(0)
                    view = full.replace(inputs=inputs).drop({k: v & ~nothing_left for k, v in failed.items()})
                    silent[(m, f, "screened")].update(predict(view, ("silent", m, f, "screened"), batch.label),
                                                      batch.label)
                    failing = present[m] & before[m][1] if f in NEEDS_PREVIOUS else present[m]
                    detected[(m, f)] += torch.stack([(failed[m] & failing).sum(), failing.sum()]).cpu()
        if progress is not None:
            progress(bi + 1)
    clean.all_reduce()
    for cm in (*corrupted.values(), *silent.values()):
        cm.all_reduce()
    for h in hist.values():
        h.all_reduce()

    metrics = {s: groups["all"] for s, groups in clean.metrics(convention).items()}
    mious = {s: m.miou for s, m in metrics.items()}
    full_name = subset_name(modalities)
    # the average and the expected mIoU are over every non-empty subset: none when a subset has no scored sample
    # (an optional sensor missing from the whole split), rather than a figure over fewer subsets
    never = [subset_name(s) for s in subsets if subset_name(s) not in mious]
    complete = bool(mious) and not never
    entire = {
        "subsets": {s: m.to_dict(class_names) for s, m in metrics.items()},
        "average": _num(sum(mious.values()) / len(mious)) if complete else None,
        "expected": {str(p): _num(expected_miou(mious, modalities, p)) for p in probabilities} if complete else {},
        "expected_definition": EXPECTED_DEFINITION,
        "average_definition": "unweighted mean of the mIoUs of every non-empty modality subset (mIoU^Avg)",
    }
    if clean.unscored:  # samples with none of a subset's sensors (a rig without them makes no prediction)
        entire["unscored_samples"] = dict(clean.unscored)
    if never:
        entire["unscored_subsets"] = never
    section: dict[str, dict] = {}
    for n, target, _, s in runs:
        c = CORRUPTIONS[n]
        entry = section.setdefault(n, {"definition": c.definition, "strength": c.strength_name,
                                       "strengths": list(strengths[n]), "miou": {}, "mean": {}})
        entry["miou"].setdefault(target, {})[str(s)] = _num(_miou(corrupted[(n, target, s)], convention))
    for entry in section.values():
        for target, by_strength in entry["miou"].items():
            vals = [v for v in by_strength.values() if v is not None]
            entry["mean"][target] = sum(vals) / len(vals) if vals else None
    results: dict[str, dict] = {}
    for (m, f), (hit, frames) in detected.items():
        frames = int(_all_reduced_sum(frames))
        results.setdefault(m, {})[f] = {
            "as_is": _num(_miou(silent[(m, f, "as_is")], convention)),
            "screened": _num(_miou(silent[(m, f, "screened")], convention)),
            "detected": int(_all_reduced_sum(hit)) / frames if frames else None,
        }
    others = {m: subset_name(tuple(k for k in modalities if k != m)) for m in modalities}
    silent_section = {
        "results": results,
        "absent": {m: _num(mious[others[m]]) if len(modalities) > 1 and others[m] in mious else None
                   for m in modalities} if failure_names else {},
        "false_alarms": {m: {k: int(_all_reduced_sum(v)) for k, v in counts.items()} for m, counts in alarms.items()}
        if failure_names else {},
        "rules": {m: dataclasses.asdict(r) for m, r in rules.items()},
        "definitions": {f: SILENT_FAILURES[f][1] for f in failure_names},
        "protocol": "one sensor's frames replaced (samples that have it); as_is: fed to the model like that; "
                    "screened: every sensor's frames checked by rgbx.data.sensor_health (thresholds in rules), a "
                    "failed one left out (never every sensor of a sample), NaN replaced; detected: fraction of the "
                    "replaced frames the checks failed; false_alarms: checks failed on the clean frames",
    }
    report = {
        "seed": seed,
        "miou_convention": convention,
        "modalities": list(modalities),
        "clean_miou": _num(mious.get(full_name, float("nan"))),
        "entire_missing": entire,
        "corruptions": section,
        "silent_failures": silent_section,
        "corruption_protocol": "each corruption applied to the named modality (or 'all') with every sensor given; "
                               "applied in physical units; seeded per sample from (seed, corruption, target, "
                               "strength, sample id, modality)",
    }
    if confidence:
        report["confidence"] = _confidence_section(hist, temperatures)
    return report


def _confidence_section(hist: dict[tuple, ReliabilityHistogram], temperatures: TemperatureScaling | None) -> dict:
    def figures(key: tuple) -> dict:
        m = hist[key].compute().to_dict()
        m.pop("bins")
        return {k: _num(v) if isinstance(v, float) else v for k, v in m.items()}

    section: dict = {
        "calibrated": temperatures is not None,
        "temperatures": temperatures.temperatures if temperatures is not None else None,
        "method": temperatures.method if temperatures is not None else None,  # vector: the model applies it
        "definition": "per labelled pixel: accuracy of the argmax, mean confidence (its probability), ECE (15 equal "
                      "bins), NLL of the true class, accuracy and share of the pixels at or above each confidence "
                      "threshold; probabilities softmax(logits / T), T the temperature of the sensors the model is "
                      "told it has (the full set's when failed frames are fed as they are; 1 uncalibrated)",
        "entire_missing": {}, "corruptions": {}, "silent_failures": {},
    }
    for key in hist:
        kind, *rest = key
        if kind == "subset":
            section["entire_missing"][rest[0]] = figures(key)
        elif kind == "corruption":
            n, target, s = rest
            section["corruptions"].setdefault(n, {}).setdefault(target, {})[str(s)] = figures(key)
        else:
            m, f, how = rest
            section["silent_failures"].setdefault(m, {}).setdefault(f, {})[how] = figures(key)
    return section


# ---------------------------------------------------------------------------------------------------------------
# printing


def _pct(v: float | None) -> str:
    return "—" if v is None or v != v else f"{100 * v:.2f}"


def entire_missing_table(report: dict, title: str | None = None):
    from rich.table import Table

    em = report["entire_missing"]
    table = Table(title=title or "entire-missing (sensor failure)", min_width=72,
                  caption=f"mIoU % ({report['miou_convention']} classes averaged); expected: each sensor fails "
                          "independently with probability p, renormalised over non-empty subsets"
                          + unscored_note(em.get("unscored_samples", {})))
    table.add_column("modalities")
    table.add_column("mIoU", justify="right")
    table.add_column("pixel acc", justify="right")
    for subset, m in em["subsets"].items():
        table.add_row(subset, _pct(m["miou"]), _pct(m["pixel_accuracy"]))
    table.add_section()
    never = em.get("unscored_subsets", [])
    if never:  # no average / expected over fewer subsets than every one
        table.add_row("average, expected", "—", "", end_section=False)
        table.caption += (f"; no sample had the sensors of {', '.join(never)}, so there is no average or expected "
                          f"mIoU over every subset")
        return table
    table.add_row("average", _pct(em["average"]), "")
    for p, v in em["expected"].items():
        table.add_row(f"expected, p={p}", _pct(v), "")
    return table


def corruption_table(report: dict, title: str | None = None):
    from rich.table import Table

    section = report["corruptions"]
    table = Table(title=title or "corruptions (every sensor given, the named one corrupted)",
                  caption=f"mIoU %; clean = {_pct(report['clean_miou'])}; seed {report['seed']}; "
                          "strength levels 1-3 as in the rows' parentheses")
    table.add_column("corruption")
    table.add_column("modality")
    levels = max((len(e["strengths"]) for e in section.values()), default=0)
    for i in range(levels):
        table.add_column(f"level {i + 1}", justify="right")
    table.add_column("mean", justify="right")
    for k, (name, entry) in enumerate(section.items()):
        if k:
            table.add_section()
        label = f"{name} ({entry['strength']}: {', '.join(f'{s:g}' for s in entry['strengths'])})"
        for target, by_strength in entry["miou"].items():
            vals = [_pct(v) for v in by_strength.values()]
            vals += [""] * (levels - len(vals))
            table.add_row(label, target, *vals, _pct(entry["mean"][target]))
            label = ""
    return table


def silent_failure_table(report: dict, title: str | None = None):
    from rich.table import Table

    section = report["silent_failures"]
    alarms = "; ".join(f"{m} {c['any']} of {c['frames']}" for m, c in section["false_alarms"].items())
    table = Table(title=title or "silent failures (a sensor keeps sending frames that carry nothing)",
                  caption=f"mIoU %; fed as is: the frames given to the model; screened: rgbx's sensor checks leave "
                          f"a failed sensor out; without it: the sensor absent. Clean frames the checks failed "
                          f"(false alarms): {alarms}")
    for name, justify in (("sensor", "left"), ("failure", "left"), ("fed as is", "right"), ("screened", "right"),
                          ("without it", "right"), ("detected", "right")):
        table.add_column(name, justify=justify)
    for k, (m, by_failure) in enumerate(section["results"].items()):
        if k:
            table.add_section()
        label = m
        for f, r in by_failure.items():
            table.add_row(label, f, _pct(r["as_is"]), _pct(r["screened"]), _pct(section["absent"].get(m)),
                          "—" if r["detected"] is None else f"{100 * r['detected']:.0f}%")
            label = ""
    return table


def _share(v: float) -> str:
    return "<1%" if 0 < v < 0.005 else f"{100 * v:.0f}%"


def confidence_table(report: dict, threshold: float = 0.9, title: str | None = None):
    """Does the confidence fall with the accuracy? One row per sensor set (entire missing), per silent failure fed
    as is and screened, and per corruption at its strongest level."""
    from rich.table import Table

    section = report["confidence"]
    how = ("raw softmax (the model file records no temperatures: rgbx calibrate)" if not section["calibrated"]
           else "calibrated per sensor set" + (" (vector scaling, in the model)" if section.get("method") == "vector"
                                               else ""))
    table = Table(title=title or "confidence when sensors fail",
                  caption=f"% of labelled pixels; {how}; over-confidence = mean confidence - accuracy; ECE over 15 "
                          f"bins; failed / corrupted frames fed as they are get the full set's temperature; — where the "
                          f"probabilities are not numbers (NaN frames fed as they are), or no pixel reaches the "
                          f"confidence (share 0%)")
    for name, justify in (("case", "left"), ("sensor", "left"), ("accuracy", "right"), ("mean confidence", "right"),
                          ("over-confidence", "right"), ("ECE", "right"),
                          (f"accuracy at conf >= {threshold:g} (share)", "right")):
        table.add_column(name, justify=justify)

    def row(case: str, sensor: str, m: dict) -> None:
        at = next((c for c in m["coverage"] if abs(c["threshold"] - threshold) < 1e-9), None)
        gap = None if m["confidence"] is None or m["accuracy"] is None else m["confidence"] - m["accuracy"]
        table.add_row(case, sensor, _pct(m["accuracy"]), _pct(m["confidence"]),
                      "—" if gap is None else f"{100 * gap:+.2f}", _pct(m["ece"]),
                      "—" if at is None else
                      f"{'—' if at['accuracy'] is None else _pct(at['accuracy'])} ({_share(at['coverage'])})")

    for subset, m in section["entire_missing"].items():
        row("sensors given", subset, m)
    for m, by_failure in section["silent_failures"].items():
        table.add_section()
        for f, hows in by_failure.items():
            row(f"{f}, fed as is", m, hows["as_is"])
            row(f"{f}, screened", m, hows["screened"])
    for n, by_target in section["corruptions"].items():
        table.add_section()
        strongest = report["corruptions"][n]["strengths"][-1]
        for target, by_strength in by_target.items():
            row(f"{n} {strongest:g}", target, by_strength[str(float(strongest))])
    return table


def print_robustness_tables(report: dict, title: str | None = None, console=None) -> None:

    from rgbx.engine.report import wide_console

    console = console or wide_console()
    if title:
        console.print(title, markup=False, highlight=False)
    console.print(entire_missing_table(report))
    if report["corruptions"]:
        console.print(corruption_table(report))
    if report.get("silent_failures", {}).get("results"):
        console.print(silent_failure_table(report))
    if report.get("confidence"):
        console.print(confidence_table(report))
