"""A sampler that can resume in the middle of an epoch and reproduces the same order after a restart."""

from __future__ import annotations

import torch


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` pairs: a fresh permutation per epoch seeded from ``(seed, epoch)``.

    ``start_step`` skips the first ``start_step * batch_size`` indices of ``start_epoch`` (what was already trained
    before a kill), without loading them. In distributed runs each rank takes every ``world_size``-th index.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 start_epoch: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_step = start_epoch, start_step

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator()
        g.manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self):
        while True:
            order = self.order(self.epoch)
            per_rank = order[self.rank :: self.world_size][: self.steps_per_epoch * self.batch_size]
            for i in per_rank[self.start_step * self.batch_size :]:
                yield (self.epoch, i)
            self.epoch += 1
            self.start_step = 0
