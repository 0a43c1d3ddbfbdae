"""A method (training recipe) = its losses + one training step over the shared model / data / engine pieces.

``Method.step(model, batch, generator)`` returns a dict of named, already weighted loss terms; the engine sums them,
back-propagates and logs each one. Methods register by name in :data:`METHODS` and are built from the experiment's
``method`` config section.
"""

from __future__ import annotations

import torch

from rgbx.registry import Registry

METHODS: Registry[type] = Registry("method")


class Method:
    """Base class: subclasses implement :meth:`step`."""

    def __init__(self, config, *, ignore_index: int = 255, class_weights: torch.Tensor | None = None):
        self.config = config
        self.ignore_index = ignore_index
        self.class_weights = class_weights

    def step(self, model: torch.nn.Module, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def drop_modalities(batch, p: float, generator: torch.Generator, min_keep: int = 1):
    """Modality dropout: each modality of each sample is dropped with probability ``p``; every sample keeps at least
    ``min_keep`` of the modalities it had (if a draw drops too many, a random one of its present modalities is put
    back). Returns the batch with dropped modalities marked absent (fill values written in)."""
    if p <= 0 or len(batch.modalities) <= 1:
        return batch
    names = list(batch.modalities)
    present = torch.stack([batch.present[n].cpu() for n in names], 1)  # (B, M)
    drop = (torch.rand(present.shape, generator=generator) < p) & present
    kept = present & ~drop
    for i in range(present.shape[0]):
        need = min(min_keep, int(present[i].sum())) - int(kept[i].sum())
        if need > 0:
            candidates = torch.nonzero(drop[i]).flatten()
            order = candidates[torch.randperm(len(candidates), generator=generator)][:need]
            drop[i, order] = False
    device = batch.present[names[0]].device
    return batch.drop({n: drop[:, j].to(device) for j, n in enumerate(names)})
