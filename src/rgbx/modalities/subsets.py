"""Sensor sets: the subsets of a model's sensors that a rig may have working, and their names."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def subset_name(modalities: Sequence[str]) -> str:
    """``"rgb+depth"``: the sensors joined by ``+`` (in the model's order, as the anymodal table names them)."""
    return "+".join(modalities)


def all_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, the full set first, then by decreasing size."""
    subsets = []
    for k in range(len(modalities), 0, -1):
        subsets.extend(itertools.combinations(modalities, k))
    return subsets
