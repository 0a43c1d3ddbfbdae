"""The sample and batch contract.

A **sample** is a plain dict (so it crosses DataLoader worker processes untouched)::

    {"inputs": {"rgb": (3,H,W) float32, "depth": (1,H,W) float32, ...},   # only the modalities this sample has
     "label": (H,W) int64 or None,
     "meta": {"id": str, "attributes": {...}, ...}}

Before :func:`normalize_sample` the inputs are in physical units (``ModalitySpec.scale`` applied); after it they are
network inputs. A modality missing from ``inputs`` is a missing sensor: a normal case, never an error.

A **batch** (:class:`Batch`) stacks samples. Every modality any sample has appears in ``inputs`` as (B,C,H,W);
samples without it hold the spec's ``fill`` value there and ``present[name][i]`` is False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from rgbx.modalities import get_modality

Sample = dict


class PresenceMasks(dict):
    """modality → (B,) bool presence masks (on the model's device), plus what is known about them on the host, so
    that deciding which modalities to compute needs no device → host synchronisation (CUDA graphs,
    ``torch.compile(fullgraph=True)``, an asynchronous training step):

    * :attr:`certain`: modalities present for every sample;
    * :attr:`host`: modality → the same mask as a CPU tensor, where the caller has it (the trainer keeps the
      collated masks before moving the batch to the GPU);
    * :attr:`on_device`: nothing is decided on the host: every modality's branch is computed for every batch and
      the absent samples are masked on the device, and modality dropout draws on the device
      (:func:`rgbx.methods.base.drop_modalities`). What a training step captured once as a CUDA graph needs, whose
      masks change from batch to batch in the graph's buffers.
    """

    __slots__ = ("certain", "host", "on_device")

    def __init__(self, masks=(), certain=(), host=None, on_device: bool = False):
        super().__init__(masks)
        self.on_device = bool(on_device)
        self.certain = frozenset(certain)
        self.host = dict(host or {})
        if self.on_device and (self.certain or self.host):
            raise ValueError("PresenceMasks(on_device=True) decides nothing on the host: no certain / host masks")

    def any_present(self, name: str) -> bool:
        """Whether any sample has ``name``; reads the device mask back only when nothing is known on the host.
        Always True when :attr:`on_device` (the branch is computed, its absent samples masked)."""
        if self.on_device:
            return True
        if name in self.certain:
            return True
        if name in self.host:
            return bool(self.host[name].any())
        return bool(self[name].any())

    def host_mask(self, name: str) -> torch.Tensor:
        """``name``'s mask on the CPU, without a device read-back when it is known on the host."""
        if name in self.host:
            return self.host[name]
        if name in self.certain:
            return torch.ones(self[name].shape, dtype=torch.bool)
        return self[name].cpu()

    def repeat(self, times: int) -> PresenceMasks:
        """The masks of ``times`` copies of the batch stacked one after the other (test-time windows and flips run
        as one batch), with what the host knows about them kept."""
        return PresenceMasks({n: m.repeat(times) for n, m in self.items()}, self.certain,
                             {n: m.repeat(times) for n, m in self.host.items()}, self.on_device)

    def subset(self, names: Iterable[str]) -> PresenceMasks:
        names = [n for n in self if n in set(names)]
        return PresenceMasks({n: self[n] for n in names}, self.certain & set(names),
                             {n: m for n, m in self.host.items() if n in names}, self.on_device)


def device_masks(present: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor | None:
    """(B, M) presence of ``names`` on the device when ``present`` is decided there (``PresenceMasks.on_device``: a
    random draw over it must then be made there too), else None (decide on the host, :func:`host_masks`)."""
    if isinstance(present, PresenceMasks) and present.on_device:
        return torch.stack([present[n] for n in names], 1)
    return None


def host_masks(present: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """(B, M) CPU bool presence of ``names``, without a device read-back where ``present`` knows them on the host."""
    if isinstance(present, PresenceMasks):
        return torch.stack([present.host_mask(n) for n in names], 1)
    return torch.stack([present[n].cpu() for n in names], 1)


def normalize_sample(sample: Sample) -> Sample:
    """Physical units → network inputs, per modality spec."""
    inputs = {name: get_modality(name).normalize(x) for name, x in sample["inputs"].items()}
    return {**sample, "inputs": inputs}


@dataclass
class GeometryDraws:
    """The geometric augmentation draws of a collated batch whose samples left that step for the batch
    (``TrainTransform(geometric_on="batch")``, applied by :class:`~rgbx.data.transforms.BatchGeometry`); kept on
    the host.

    Attributes:
        draws: (B, 4) float64: resize factor, crop position draws (top, left) in [0, 1), flip (1.0 or 0.0).
        sizes: (B, 2) int64: each sample's source (H, W); the collated maps are padded at the bottom / right to
            the largest.
    """

    draws: torch.Tensor
    sizes: torch.Tensor

    def __len__(self) -> int:
        return self.draws.shape[0]


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        inputs: modality → (B, C, H, W) normalised tensor; absent entries hold the spec's fill value.
        present: modality → (B,) bool, which samples really have the modality.
        label: (B, H, W) int64, or None for unlabelled data.
        meta: one dict per sample.
        geometry: the geometric augmentation still to apply (:class:`GeometryDraws`; the maps are then at their
            source size), or None.
    """

    inputs: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    label: torch.Tensor | None = None
    meta: list[dict] = field(default_factory=list)
    geometry: GeometryDraws | None = None

    def replace(self, **changes) -> Batch:
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def to(self, device, non_blocking: bool = False) -> Batch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return self.replace(  # the geometric draws stay on the host, which plans the step from them
            inputs={k: move(v) for k, v in self.inputs.items()},
            present={k: move(v) for k, v in self.present.items()},
            label=None if self.label is None else move(self.label),
        )

    def pin_memory(self) -> Batch:
        return self.replace(
            inputs={k: v.pin_memory() for k, v in self.inputs.items()},
            present={k: v.pin_memory() for k, v in self.present.items()},
            label=None if self.label is None else self.label.pin_memory(),
        )

    def with_modalities(self, names: Iterable[str]) -> Batch:
        """The same batch seen by a rig that only has ``names`` (others removed, i.e. absent)."""
        keep = [n for n in self.inputs if n in set(names)]
        if isinstance(self.present, PresenceMasks):
            present = self.present.subset(keep)
        else:
            present = {n: self.present[n] for n in keep}
        return self.replace(inputs={n: self.inputs[n] for n in keep}, present=present)

    def drop(self, mask: dict[str, torch.Tensor]) -> Batch:
        """Mark modality ``m`` absent for the samples where ``mask[m]`` is True (fill value written in).

        Masks drawn on the CPU (as modality dropout draws them) also keep what :class:`PresenceMasks` knows on the
        host up to date, so the model still needs no device read-back; a mask on the device makes that modality's
        presence unknown on the host."""
        inputs, present = dict(self.inputs), dict(self.present)
        known = self.present if isinstance(self.present, PresenceMasks) else None
        certain = set(known.certain) if known else set()
        host = dict(known.host) if known else {}
        for name, drop in mask.items():
            if name not in inputs:
                continue
            x = inputs[name]
            if known is not None and not known.on_device and drop.device.type == "cpu":
                host[name] = known.host_mask(name) & ~drop
                if bool(drop.any()):
                    certain.discard(name)
            else:
                certain.discard(name)
                host.pop(name, None)
            keep = present[name] & ~drop.to(x.device, non_blocking=True)
            inputs[name] = torch.where(keep.view(-1, 1, 1, 1), x, torch.full_like(x, get_modality(name).fill))
            present[name] = keep
        if known is not None:
            present = PresenceMasks(present, certain, host, known.on_device)
        return self.replace(inputs=inputs, present=present)

    def with_every(self, names: Iterable[str]) -> Batch:
        """The batch with every modality of ``names`` in ``inputs``: one that no sample of this batch has is added
        as absent (fill value, ``present`` False), so that batches of optional sensors all have the same tensors
        (a training step captured as a CUDA graph copies each batch into the same buffers)."""
        missing = [n for n in names if n not in self.inputs]
        if not missing:
            return self
        ref = next(iter(self.inputs.values()))
        b, (h, w) = ref.shape[0], ref.shape[-2:]
        inputs, present = dict(self.inputs), dict(self.present)
        for n in missing:
            spec = get_modality(n)
            inputs[n] = torch.full((b, spec.channels, h, w), spec.fill, dtype=ref.dtype, device=ref.device)
            present[n] = torch.zeros(b, dtype=torch.bool, device=ref.device)
        if isinstance(self.present, PresenceMasks):
            known = self.present
            present = PresenceMasks(present, known.certain, {**known.host, **{
                n: torch.zeros(b, dtype=torch.bool) for n in missing if not known.on_device}}, known.on_device)
        return self.replace(inputs=inputs, present=present)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples whose modalities may differ; absent modalities become fill + ``present=False``.

    Samples that carry geometric draws (``"geometry"``, from ``TrainTransform(geometric_on="batch")``) may differ
    in size: their maps are padded at the bottom / right to the largest, and the draws and sizes go to
    :attr:`Batch.geometry`."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    deferred = ["geometry" in s for s in samples]
    if any(deferred):
        if not all(deferred):
            raise ValueError("cannot collate samples with and without geometric draws ('geometry'): all must come "
                             "from TrainTransform(geometric_on='batch'), or none")
        return _collate_padded(samples)
    names: list[str] = []
    for s in samples:
        for n in s["inputs"]:
            if n not in names:
                names.append(n)
    inputs, present = {}, {}
    for n in names:
        ref = next(s["inputs"][n] for s in samples if n in s["inputs"])
        fill = get_modality(n).fill
        stacked = []
        for s in samples:
            x = s["inputs"].get(n)
            if x is None:
                x = torch.full_like(ref, fill)
            elif x.shape != ref.shape:
                raise ValueError(
                    f"cannot batch modality {n!r}: sample {s['meta'].get('id')} has shape {tuple(x.shape)}, "
                    f"another has {tuple(ref.shape)}; crop or resize to a common size first"
                )
            stacked.append(x)
        inputs[n] = torch.stack(stacked)
        present[n] = torch.tensor([n in s["inputs"] for s in samples], dtype=torch.bool)
    labels = [s.get("label") for s in samples]
    label = torch.stack(labels) if all(lb is not None for lb in labels) else None
    return Batch(inputs, present, label, [s.get("meta", {}) for s in samples])


def _pad_to(x: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    ph, pw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return x if ph == pw == 0 else torch.nn.functional.pad(x, (0, pw, 0, ph), value=value)


def _collate_padded(samples: Sequence[Sample]) -> Batch:
    """:func:`collate` for samples at their source size with geometric draws: maps padded to the largest size."""
    sizes = []
    for s in samples:
        shapes = {tuple(x.shape[-2:]) for x in s["inputs"].values()}
        if s.get("label") is not None:
            shapes.add(tuple(s["label"].shape[-2:]))
        if len(shapes) != 1:
            raise ValueError(f"sample {s.get('meta', {}).get('id')}: maps of sizes {sorted(shapes)}; a sample's "
                             "maps must share one size")
        sizes.append(shapes.pop())
    # the padding is never read: each sample's taps stay inside its own size
    big = (max(h for h, _ in sizes), max(w for _, w in sizes))
    padded = [{**s, "inputs": {n: _pad_to(x, big, get_modality(n).fill) for n, x in s["inputs"].items()},
               "label": None if s.get("label") is None else _pad_to(s["label"], big, 0)} for s in samples]
    for s in padded:
        del s["geometry"]
    batch = collate(padded)
    draws = torch.stack([torch.as_tensor(s["geometry"], dtype=torch.float64) for s in samples])
    if draws.shape[1:] != (4,):
        raise ValueError(f"geometric draws must be 4 numbers per sample (scale, top, left, flip), got shape "
                         f"{tuple(draws.shape[1:])}")
    return batch.replace(geometry=GeometryDraws(draws, torch.tensor(sizes, dtype=torch.int64)))
