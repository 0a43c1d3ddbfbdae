"""Confidence calibration: how far a model's per-pixel softmax confidence can be trusted, and temperature scaling
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) to make it so.

A planner that acts on a segmentation ("stop if a person is there with more than 30 % probability") needs
probabilities that mean what they say, and most of all when a sensor has failed and the model predicts from the
others. A network trained with cross-entropy is usually over-confident, and differently so for each set of sensors.

* :class:`ReliabilityHistogram` accumulates, over the labelled pixels of an evaluation, what the calibration
  metrics need: the expected calibration error (Guo et al. eq. 3), ``ECE = Σ_b |B_b| / n · |acc(B_b) − conf(B_b)|``
  over ``bins`` equal-width confidence bins, the maximum calibration error (``MCE = max_b |acc − conf|``), the
  negative log-likelihood of the true class, and the accuracy of the pixels whose confidence reaches a threshold
  (with the share of pixels that do: what a "don't know below p" rule keeps).
* :func:`fit_temperature`: the one scalar ``T`` that minimises the NLL of ``softmax(z / T)`` over held-out pixels
  (Guo et al. §4.2). The argmax, hence the mIoU, does not change. For one pass the NLL is convex in ``1 / T``, so a
  golden-section search over ``log T`` finds the optimum without a learning rate.
* :class:`TemperatureScaling`: one temperature per sensor set (``"rgb+depth"``, ``"rgb"``, ...), kept in the model
  file (``calibration``), so that a model that loses its depth camera at run time uses the temperature fitted for RGB
  alone. A set without its own temperature uses the full set's.
* :func:`fit_vector_scaling`: vector scaling (Guo et al. §4.2), a scale and a bias per class, ``softmax(s ⊙ z + b)``;
  it changes the argmax, so a model file applies it itself (:mod:`rgbx.models.sensor_set_scaling`, one pair per
  sensor set), and the record's temperatures are then 1.
* :func:`fit_temperatures`: the temperatures (or vector scalings) of a model over a loader; :func:`calibrate_file`:
  those of a model file on a dataset split, written into a copy of the file (``rgbx calibrate``, ``rgbx.calibrate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rgbx.engine.metrics import labelled
from rgbx.errors import ConfigError

DEFAULT_BINS = 15
COVERAGE_THRESHOLDS = (0.5, 0.8, 0.9, 0.95)
TEMPERATURE_BOUNDS = (0.05, 20.0)
SCALINGS = ("temperature", "vector")


@dataclass
class CalibrationMetrics:
    """Calibration of one sensor set's confidences (fractions 0-1; ``nll`` in nats per pixel)."""

    ece: float
    mce: float
    nll: float
    accuracy: float
    confidence: float
    pixels: int
    bins: list[dict] = field(default_factory=list)  # lower, upper, pixels, confidence, accuracy
    coverage: list[dict] = field(default_factory=list)  # threshold, coverage, accuracy

    def to_dict(self) -> dict:
        return asdict(self)


class ReliabilityHistogram:
    """Accumulates per-pixel confidences against the labels (pixels labelled ``ignore_index`` are not counted).

    ``update(probs, target)``: ``probs`` (B, K, H, W) class probabilities, ``target`` (B, H, W) labels."""

    def __init__(self, num_classes: int, ignore_index: int = 255, bins: int = DEFAULT_BINS,
                 thresholds: Sequence[float] = COVERAGE_THRESHOLDS):
        if bins < 1:
            raise ConfigError(f"calibration bins: expected at least 1, got {bins}")
        self.num_classes, self.ignore_index, self.bins = num_classes, ignore_index, bins
        self.thresholds = tuple(float(t) for t in thresholds)
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.confidence = torch.zeros(bins, dtype=torch.float64)
        self.correct = torch.zeros(bins, dtype=torch.float64)
        self.nll = torch.zeros(1, dtype=torch.float64)
        self.above = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self.above_correct = torch.zeros(len(self.thresholds), dtype=torch.float64)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        if probs.dim() != 4 or probs.shape[1] != self.num_classes or probs.shape[0] != target.shape[0] \
                or probs.shape[2:] != target.shape[1:]:
            raise ValueError(f"probabilities of shape {tuple(probs.shape)} for labels of shape "
                             f"{tuple(target.shape)}: expected (B, {self.num_classes}, H, W) and (B, H, W)")
        valid = labelled(target, self.num_classes, self.ignore_index)
        if not valid.any():
            return
        probs = probs.float()
        if self.counts.device != probs.device:  # the sums stay on the device: no host round trip per batch
            self._move(probs.device)
        conf, pred = probs.max(1)
        truth = target.clamp(0, self.num_classes - 1).long()
        p_true = probs.gather(1, truth[:, None])[:, 0]
        conf, pred, truth, p_true = conf[valid], pred[valid], truth[valid], p_true[valid]
        right = (pred == truth).double()
        b = (conf * self.bins).long().clamp(0, self.bins - 1)
        self.counts += torch.bincount(b, minlength=self.bins).double()
        self.confidence += torch.bincount(b, weights=conf.double(), minlength=self.bins)
        self.correct += torch.bincount(b, weights=right, minlength=self.bins)
        self.nll += -torch.log(p_true.double().clamp_min(1e-12)).sum()
        kept = conf[None] >= torch.tensor(self.thresholds, device=conf.device)[:, None]  # (thresholds, pixels)
        self.above += kept.sum(1).double()
        self.above_correct += (kept.double() * right).sum(1)

    def _state(self) -> list[torch.Tensor]:
        return [self.counts, self.confidence, self.correct, self.nll, self.above, self.above_correct]

    def _move(self, device) -> None:
        self.counts, self.confidence, self.correct, self.nll, self.above, self.above_correct = (
            t.to(device) for t in self._state())

    def merge(self, other: ReliabilityHistogram) -> None:
        for mine, theirs in zip(self._state(), other._state()):
            mine += theirs.to(mine.device)

    def all_reduce(self) -> None:
        """Sum over the ranks of a distributed run (one collective)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return
        state = self._state()
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flat = torch.cat([s.to(device) for s in state])
        dist.all_reduce(flat)
        self._move("cpu")
        for mine, part in zip(self._state(), flat.cpu().split([s.numel() for s in state])):
            mine.copy_(part)

    def compute(self) -> CalibrationMetrics:
        self._move("cpu")
        n = float(self.counts.sum())
        if n == 0:
            nan = float("nan")
            return CalibrationMetrics(nan, nan, nan, nan, nan, 0)
        filled = self.counts > 0
        acc = self.correct / self.counts.clamp(min=1)
        conf = self.confidence / self.counts.clamp(min=1)
        gap = (acc - conf).abs()
        edges = [i / self.bins for i in range(self.bins + 1)]
        bins = [{"lower": edges[i], "upper": edges[i + 1], "pixels": int(self.counts[i]),
                 "confidence": float(conf[i]) if filled[i] else None, "accuracy": float(acc[i]) if filled[i] else None}
                for i in range(self.bins)]
        coverage = [{"threshold": t, "coverage": float(self.above[i]) / n,
                     "accuracy": float(self.above_correct[i] / self.above[i]) if self.above[i] > 0 else None}
                    for i, t in enumerate(self.thresholds)]
        return CalibrationMetrics(
            ece=float((self.counts * gap).sum() / n), mce=float(gap[filled].max()), nll=float(self.nll) / n,
            accuracy=float(self.correct.sum()) / n, confidence=float(self.confidence.sum()) / n, pixels=int(n),
            bins=bins, coverage=coverage)


# --- temperature scaling --------------------------------------------------------------------------------------------


def temperature_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, K) probabilities: ``softmax(logits / temperature)`` of (N, K) logits, or the mean over the test-time
    passes of (P, N, K) logits (what :func:`rgbx.engine.inference.predict_logits` averages)."""
    probs = (logits.float() / temperature).softmax(-1)
    return probs if logits.dim() == 2 else probs.mean(0)


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL (nats) of :func:`temperature_probabilities` for (N, K) or (P, N, K) logits and (N,) labels, in float64:
    near its minimum the NLL moves by ~1e-5 for a 1 % change of T, which float32's rounding of a mean over many
    pixels blurs (the fitted T then moved by 5e-4 with the evaluation's batch size)."""
    labels, logits = labels.long(), logits.double()
    if logits.dim() == 2:
        return float(F.cross_entropy(logits / temperature, labels))
    # the mean of the passes' probabilities, in log space: log mean_p p_p(y) = logsumexp_p log p_p(y) - log P
    log_p = (logits / temperature).log_softmax(-1).gather(-1, labels.expand(logits.shape[0], -1)[..., None])
    return float(-(torch.logsumexp(log_p[..., 0], 0) - math.log(logits.shape[0])).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    tolerance: float = 1e-4) -> float:
    """The temperature in ``bounds`` that minimises the NLL of ``softmax(logits / T)`` (Guo et al. §4.2): a
    golden-section search over ``log T`` (for one pass the NLL is convex in ``1 / T``, so it has one minimum there;
    averaged passes have no such guarantee, and the search then finds a local minimum).

    ``logits``: (N, K) held-out pixels' logits, or (P, N, K): each of P test-time passes' (the probabilities then
    averaged over the passes, as multi-scale / flip testing does); ``labels``: (N,) their classes."""
    if logits.dim() not in (2, 3) or labels.dim() != 1 or labels.shape[0] != logits.shape[-2] or not labels.numel():
        raise ConfigError(f"temperature fitting needs (N, K) or (P, N, K) logits and (N,) labels with N > 0; got "
                          f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.double(), labels.long()
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return temperature_nll(logits, labels, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


VECTOR_PENALTY = 1e-3  # L2 weight on the bias and the log scale: pins the softmax's free shift, and keeps the bias
# of a class that no fitted pixel has (the NLL would push it towards −∞) near 0


def vector_logits(logits: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``scale ⊙ logits + bias`` over the last dimension (the classes) of (N, K) or (P, N, K) logits."""
    return logits.float() * scale + bias


def vector_nll(logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Mean NLL (nats, a differentiable tensor) of ``softmax(scale ⊙ z + bias)``: for (N, K) logits, or the mean
    of the probabilities of (P, N, K) test-time passes, as :func:`temperature_nll`."""
    z = vector_logits(logits, scale, bias)
    if z.dim() == 2:
        return F.cross_entropy(z, labels)
    log_p = z.log_softmax(-1).gather(-1, labels.expand(z.shape[0], -1)[..., None])[..., 0]
    return -(torch.logsumexp(log_p, 0) - math.log(z.shape[0])).mean()


def fit_vector_scaling(logits: torch.Tensor, labels: torch.Tensor, penalty: float = VECTOR_PENALTY,
                       max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector scaling (Guo et al. §4.2): the per-class scale ``s = exp(σ)`` and bias ``b`` ((K,) each) that minimise
    ``NLL(softmax(s ⊙ z + b)) + penalty · (‖σ‖² + ‖b‖²)`` over held-out pixels, by L-BFGS. The scale is kept positive
    (a class's logits keep their order); the argmax may change. Arguments as :func:`fit_temperature`."""
    if logits.dim() not in (2, 3) or labels.dim() != 1 or labels.shape[0] != logits.shape[-2] or not labels.numel():
        raise ConfigError(f"vector scaling needs (N, K) or (P, N, K) logits and (N,) labels with N > 0; got "
                          f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.float(), labels.long()
    k = logits.shape[-1]
    log_scale = torch.zeros(k, requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_scale, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = vector_nll(logits, labels, log_scale.exp(), bias) + penalty * (log_scale.square().sum()
                                                                               + bias.square().sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return log_scale.detach().exp(), bias.detach()


class PixelSample:
    """Held-out pixels' logits and labels for fitting a temperature: up to ``per_image`` labelled pixels of each
    image, drawn uniformly at random (seeded), kept on the CPU."""

    def __init__(self, per_image: int, ignore_index: int = 255, seed: int = 0):
        if per_image < 1:
            raise ConfigError(f"pixels per image: expected at least 1, got {per_image}")
        self.per_image, self.ignore_index = per_image, ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def add(self, logits, target: torch.Tensor, num_classes: int | None = None) -> None:
        """``logits``: (B, K, H, W), or an iterable of them (each test-time pass's, read one at a time: the same
        pixels are drawn from each); ``target`` (B, H, W); ``num_classes``: K (read off a tensor when not given)."""
        passes = [logits] if isinstance(logits, torch.Tensor) else logits
        k = num_classes if num_classes is not None else logits.shape[1]
        chosen = []
        for y in target:
            where = labelled(y, k, self.ignore_index).flatten().nonzero()[:, 0].cpu()
            if where.numel() > self.per_image:
                where = where[torch.randperm(where.numel(), generator=self.generator)[: self.per_image]]
            chosen.append(where)
        drawn = [[] for _ in chosen]  # per image: each pass's (n, K)
        for z in passes:
            for i, where in enumerate(chosen):
                if where.numel():
                    drawn[i].append(z[i].flatten(1)[:, where.to(z.device)].T.float().cpu())
        for y, where, per_pass in zip(target, chosen, drawn):
            if where.numel():
                self._logits.append(torch.stack(per_pass))
                self._labels.append(y.flatten()[where.to(y.device)].long().cpu())

    def __len__(self) -> int:
        return sum(len(y) for y in self._labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K) logits and (N,) labels; (P, N, K) logits when the images were added with P test-time passes."""
        if not self._labels:
            raise ConfigError("no labelled pixel to fit a temperature on")
        logits = torch.cat(self._logits, 1)
        return (logits[0] if logits.shape[0] == 1 else logits), torch.cat(self._labels)


@dataclass
class TemperatureScaling:
    """Temperatures per sensor set (``"rgb+depth"``: sensors joined by ``+`` in the model's order), as a model file
    keeps them under ``calibration``. ``default``: the set whose temperature serves a set without its own (the
    model's full set)."""

    temperatures: dict[str, float]
    default: str
    fitted_on: str = ""
    pixels: int = 0
    fit: dict[str, dict] = field(default_factory=dict)  # set -> nll / ece before and after, on the fitted pixels
    test_time: dict = field(default_factory=dict)  # the test-time passes fitted for (scales, flip, window, ...)
    method: str = "temperature"  # or "vector": the model's SensorSetScaling holds the fit, the temperatures are 1
    vectors: dict[str, dict] = field(default_factory=dict)  # vector: set -> {"scale": [K], "bias": [K]} (a record)

    def temperature(self, sensors: Iterable[str], order: Sequence[str] | None = None) -> float:
        """The temperature for predicting from ``sensors`` (ordered by ``order``, the model's sensors, if given)."""
        sensors = list(sensors)
        if order is not None:
            sensors = [m for m in order if m in sensors]
        name = "+".join(sensors)
        if name in self.temperatures:
            return self.temperatures[name]
        return self.temperatures.get(self.default, 1.0)

    def per_sample(self, present: dict[str, torch.Tensor], order: Sequence[str]) -> torch.Tensor:
        """(B,) float32: each sample's temperature, for the sensors ``present`` (modality → (B,) bool, a batch's
        presence masks) says it has, ordered by ``order`` (the model's sensors)."""
        from rgbx.data.sample import host_masks

        names = [m for m in order if m in present]
        rows = host_masks(present, names).tolist()
        return torch.tensor([self.temperature([n for n, has in zip(names, row) if has]) for row in rows],
                            dtype=torch.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict, source: str = "the model file") -> TemperatureScaling | None:
        """The record in a model file's metadata (None when the file was never calibrated)."""
        record = info.get("calibration")
        if not record:
            return None
        try:
            temperatures = {str(k): float(v) for k, v in record["temperatures"].items()}
            bad = {k: v for k, v in temperatures.items() if not (v > 0 and math.isfinite(v))}
            if bad:
                raise ValueError(f"temperatures must be positive and finite, got {bad}")
            method = str(record.get("method", "temperature"))
            if method not in SCALINGS:
                raise ValueError(f"method {method!r}, expected one of {', '.join(SCALINGS)}")
            return cls(temperatures, str(record["default"]), str(record.get("fitted_on", "")),
                       int(record.get("pixels", 0)), dict(record.get("fit") or {}), dict(record.get("test_time") or {}),
                       method, dict(record.get("vectors") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            from rgbx.errors import CheckpointError

            raise CheckpointError(f"{source}: unreadable calibration record ({e})") from None


def fit_temperatures(model: torch.nn.Module, loader, subsets: Sequence[Sequence[str]], *, ignore_index: int = 255,
                     per_image: int = 2048, device: str | torch.device = "cpu", seed: int = 0,
                     progress: Callable[[int], None] | None = None, fitted_on: str = "",
                     bins: int = DEFAULT_BINS, scales: Sequence[float] = (1.0,), flip: bool = False,
                     window=None, scale_rule: str = "rgbx", scaling: str = "temperature") -> TemperatureScaling:
    """One temperature per sensor set in ``subsets`` (the first is the default), fitted on up to ``per_image``
    labelled pixels of each image of ``loader`` (batches of :class:`~rgbx.data.Batch`) that has every sensor of the
    set, from one forward pass of each set per batch. ``fit`` records each set's NLL and ECE on those pixels before
    and after. A set no image has in full gets no temperature of its own (``fit`` says so); the default set must
    have one. ``scales`` / ``flip`` / ``window`` / ``scale_rule``: the test-time passes the temperatures are for
    (:func:`rgbx.engine.inference.predict_logits`; the fit then explains the mean of the passes' probabilities).

    ``scaling="vector"``: a per-class scale and bias per set instead (:func:`fit_vector_scaling`, recorded in
    ``vectors``; the temperatures are then 1, for the model's :class:`~rgbx.models.sensor_set_scaling.SensorSetScaling`
    applies the fit once :func:`calibrate_file` has put it there; ``fit`` also records the accuracy on the fitted
    pixels before and after)."""
    from rgbx.data.sample import host_masks
    from rgbx.engine.inference import as_sliding_window, pass_logits, single_pass

    window = as_sliding_window(window)
    if scaling not in SCALINGS:
        raise ConfigError(f"scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")

    device = torch.device(device)
    model.eval()
    subsets = [tuple(s) for s in subsets]
    samples = {s: PixelSample(per_image, ignore_index, seed) for s in subsets}
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if batch.label is None:
                raise ConfigError("calibration needs labelled data")
            batch = batch.to(device, non_blocking=True)
            for subset in subsets:
                view = batch.with_modalities(subset)
                have = [m for m in subset if m in view.present]  # a sensor no image of the batch has: not there
                complete = (host_masks(view.present, have).all(1) if len(have) == len(subset)
                            else torch.zeros(1, dtype=torch.bool))
                if not complete.any():
                    continue
                keep = None if complete.all() else complete.to(device)  # the images that have every sensor of it
                if single_pass(scales, flip) and window is None:
                    logits = model(view.inputs, view.present).logits
                    samples[subset].add(logits if keep is None else logits[keep],
                                        batch.label if keep is None else batch.label[keep])
                else:
                    passes = pass_logits(model, view.inputs, view.present, scales, flip, window, scale_rule)
                    samples[subset].add((z if keep is None else z[keep] for z in passes),
                                        batch.label if keep is None else batch.label[keep], model.num_classes)
            if progress is not None:
                progress(i + 1)
    temperatures, fit, pixels, vectors = {}, {}, 0, {}
    for subset, sample in samples.items():
        name = "+".join(subset)
        if not len(sample):
            if subset == subsets[0]:
                raise ConfigError(f"{fitted_on or 'the data'}: no labelled pixel to fit the temperature of {name} on "
                                  f"(every label is the ignore index {ignore_index}, or no image has all of "
                                  f"{', '.join(subset)})")
            fit[name] = {"pixels": 0, "note": f"no image with all of {', '.join(subset)}: {name} uses the "
                                              f"temperature of {'+'.join(subsets[0])}"}
            continue
        logits, labels = sample.tensors()
        pixels = max(pixels, len(labels))
        if scaling == "vector":  # Guo et al. §4.2: z' = s ⊙ z + b
            scale, bias = fit_vector_scaling(logits, labels)
            vectors[name] = {"scale": scale.tolist(), "bias": bias.tolist()}
            temperatures[name] = 1.0
            after = vector_logits(logits, scale, bias)
            fit[name] = {"pixels": len(labels),
                         "nll": [temperature_nll(logits, labels, 1.0), temperature_nll(after, labels, 1.0)],
                         "ece": [_sample_ece(logits, labels, 1.0, bins), _sample_ece(after, labels, 1.0, bins)],
                         "accuracy": [_sample_accuracy(logits, labels), _sample_accuracy(after, labels)]}
            continue
        t = fit_temperature(logits, labels)  # Guo et al. §4.2: z' = z / T
        temperatures[name] = t
        fit[name] = {"pixels": len(labels),
                     "nll": [temperature_nll(logits, labels, 1.0), temperature_nll(logits, labels, t)],
                     "ece": [_sample_ece(logits, labels, 1.0, bins), _sample_ece(logits, labels, t, bins)]}
    test_time = {"scales": [float(x) for x in scales], "flip": bool(flip), "scale_rule": scale_rule,
                 "window": None if window is None else list(window.size),
                 "stride": None if window is None else list(window.stride)}
    return TemperatureScaling(temperatures, "+".join(subsets[0]), fitted_on, pixels, fit, test_time, scaling, vectors)


def _sample_ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float, bins: int) -> float:
    histogram = ReliabilityHistogram(logits.shape[-1], ignore_index=-1, bins=bins)
    histogram.update(temperature_probabilities(logits, temperature).T[None, :, :, None], labels[None, :, None])
    return histogram.compute().ece


def _sample_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((temperature_probabilities(logits, 1.0).argmax(-1) == labels).float().mean())


def calibrated_path(checkpoint: str | Path) -> Path:
    """Where :func:`calibrate_file` writes by default: ``MODEL.calibrated.safetensors`` beside ``MODEL``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".calibrated.safetensors")


def at_bound(temperature: float, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> bool:
    """Whether a fitted temperature stopped at the search's edge (the confidences carry almost no information, or
    the logits almost none of their scale)."""
    return temperature <= bounds[0] * 1.01 or temperature >= bounds[1] * 0.99


def calibrate_file(checkpoint: str | Path, data: str | Path, split: str = "val", *, dataset: str = "folder",
                   options: dict | None = None, sensors: str = "all", per_image: int = 2048, seed: int = 0,
                   out: str | Path | None = None, batch_size: int = 4, num_workers: int = 0,
                   device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
                   scaling: str = "temperature", **test_time) -> tuple[Path, TemperatureScaling]:
    """Fit the temperatures of an rgbx model file on a labelled dataset split and write a copy of the file that
    records them (what ``rgbx calibrate`` does). Returns the path written and the temperatures.

    Args:
        checkpoint: the rgbx model file; it is not modified unless ``out`` names it (then replaced atomically).
        data, split, dataset, options: the dataset folder, its split, its registered loader and the loader's options.
        sensors: ``"all"``: one temperature per non-empty subset of the model's sensors; ``"full"``: one, fitted
            with every sensor, for every set.
        per_image, seed: labelled pixels drawn at random from each image for the fit, and the draw's seed.
        out: the file to write (default :func:`calibrated_path`).
        progress: a callable(batches_done, batches), called after each batch.
        scaling: ``"temperature"`` (predictions unchanged) or ``"vector"``: a per-class scale and bias per sensor
            set, written into the model (:class:`~rgbx.models.sensor_set_scaling.SensorSetScaling`), so that the
            written file's predictions change too; fitted on the network's own logits (a scaling the file already
            has is replaced). A set no image has in full (and with ``sensors="full"``, every set) gets the full
            set's.
        test_time: ``scales``, ``flip``, ``window``, ``scale_rule``: the test-time passes the deployment will use
            (default one pass), fitted for as :func:`fit_temperatures` does.

    Example::

        path, scaling = rgbx.calibrate("runs/x/model.safetensors", "data/synth", "val")
        scaling.temperatures   # {"rgb+depth": 0.96, "rgb": 1.71, "depth": 0.71}
    """
    from rgbx.data import build_dataset, collate
    from rgbx.data.transforms import EvalTransform
    from rgbx.device import resolve_device
    from rgbx.engine.checkpoint import check_classes, load_model
    from rgbx.engine.onnx_model import is_onnx_file
    from rgbx.modalities.subsets import all_subsets
    from rgbx.models.model_file import save_model

    checkpoint = Path(checkpoint)
    if is_onnx_file(checkpoint):
        raise ConfigError(f"{checkpoint}: calibration writes an rgbx model file; calibrate the .safetensors file and "
                          f"export it again (rgbx export keeps the temperatures)")
    if sensors not in ("all", "full"):
        raise ConfigError(f"sensors {sensors!r}: expected 'all' (a temperature per sensor set) or 'full' (one)")
    if scaling not in SCALINGS:
        raise ConfigError(f"scaling {scaling!r}: expected one of {', '.join(SCALINGS)}")
    device = resolve_device(device)
    model, info = load_model(checkpoint, device)
    if scaling == "vector":
        model.add_vector_scaling().reset()  # fitted on the network's own logits
    opened = build_dataset(dataset, data, split, modalities=list(model.modalities), transform=EvalTransform(),
                           **(options or {}))
    opened.require_labels("calibration")
    desc = opened.description
    check_classes(model.num_classes, info, desc.classes, checkpoint, f"{data} [{split}]")
    subsets = all_subsets(model.modalities) if sensors == "all" else [tuple(model.modalities)]
    loader = torch.utils.data.DataLoader(opened, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    fitted = fit_temperatures(model, loader, subsets, ignore_index=desc.ignore_index, per_image=per_image,
                              device=device, seed=seed, fitted_on=f"{data} [{split}]",
                              progress=None if progress is None else lambda done: progress(done, len(loader)),
                              scaling=scaling, **test_time)
    if scaling == "vector":
        for subset in all_subsets(model.modalities):
            vector = fitted.vectors.get("+".join(subset), fitted.vectors[fitted.default])
            model.set_scaling.set(subset, torch.tensor(vector["scale"]), torch.tensor(vector["bias"]))
    kept = {k: v for k, v in info.items() if k not in ("format", "model", "dataset", "sensors", "plugins")}
    kept["calibration"] = fitted.to_dict()
    out = Path(out) if out is not None else calibrated_path(checkpoint)
    save_model(out, model, info.get("dataset"), **kept)
    return out, fitted
