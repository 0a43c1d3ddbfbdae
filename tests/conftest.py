"""Shared fixtures: a tiny dataset folder written by hand (independent of the synthetic generator), and a training
run killed at a given iteration."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbx.data.description import write_description
from rgbx.modalities import write_array

# Under pytest-xdist (-n 2) each worker gets one of the machine's two cores.
_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
torch.set_num_threads(int(_THREADS))

CLASSES = ["ground", "box", "person"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Give every test the worker's thread count back: a command run in-process (``train.threads=2``, the demo
    preset, ``--threads``) sets torch's for the whole process, and two workers with two threads each on two cores
    made every later test of that worker several times slower (OpenMP threads waiting on a busy core)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class TrainingKilled(Exception):
    """What :func:`run_killed_at` raises in place of a training step, as a kill would stop the process."""


def run_killed_at(monkeypatch, iteration: int, run) -> None:
    """Call ``run()`` (a training run) with the trainer's step raising :class:`TrainingKilled` once the run reaches
    ``iteration``, as a process killed there; the real step is back afterwards, for the resumed run."""
    from rgbx.engine.trainer import Trainer

    real_step = Trainer.train_step

    def dies(self, batch):
        if self.iteration == iteration:
            raise TrainingKilled
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dies)
    try:
        with pytest.raises(TrainingKilled):
            run()
    finally:
        monkeypatch.setattr(Trainer, "train_step", real_step)


def make_dataset(root: Path, n: int = 6, size=(16, 20), modalities=("rgb", "depth", "thermal"),
                 splits=None, seed: int = 0) -> Path:
    """A learnable toy dataset: class = ground / box / person, visible in depth (box) and thermal (person)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    for m in (*modalities, "label"):
        (root / m).mkdir(parents=True, exist_ok=True)
    ids = [f"s{i:03d}" for i in range(n)]
    conditions = []
    for sid in ids:
        label = np.zeros((h, w), np.uint8)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y0 : y0 + h // 3, x0 : x0 + w // 3] = 1
        y1, x1 = rng.integers(0, h // 2), rng.integers(w // 2, w - 2)
        label[y1 : y1 + h // 3, x1 : x1 + 3] = 2
        label[0, 0] = 255  # an ignored pixel
        if "rgb" in modalities:
            rgb = rng.integers(0, 255, (3, h, w)).astype(np.uint8)
            write_array(root / "rgb" / f"{sid}.png", rgb)
        if "depth" in modalities:
            depth = np.full((1, h, w), 8000, np.uint16)
            depth[0][label == 1] = 3000
            write_array(root / "depth" / f"{sid}.png", depth)
        if "thermal" in modalities:
            thermal = np.full((1, h, w), 60, np.uint8)
            thermal[0][label == 2] = 200
            write_array(root / "thermal" / f"{sid}.png", thermal)
        if "lidar" in modalities:
            lidar = np.zeros((1, h, w), np.uint16)
            lidar[0, ::4, ::3] = 5000
            write_array(root / "lidar" / f"{sid}.png", lidar)
        if "event" in modalities:
            write_array(root / "event" / f"{sid}.png", rng.integers(0, 3, (2, h, w)).astype(np.uint8))
        write_array(root / "label" / f"{sid}.png", label)
        conditions.append("night" if len(conditions) % 2 else "day")
    splits = splits or {"train": ids[: n - 2], "val": ids[n - 2 :]}
    (root / "splits").mkdir(exist_ok=True)
    for name, members in splits.items():
        (root / "splits" / f"{name}.txt").write_text("\n".join(members) + "\n")
    (root / "attributes.csv").write_text("id,condition\n" + "".join(f"{i},{c}\n" for i, c in zip(ids, conditions)))
    scales = {"rgb": 1 / 255, "depth": 0.001, "thermal": 1 / 255, "lidar": 0.001, "event": 1.0}
    write_description(root, name="toy", classes=CLASSES, palette=[[0, 0, 0], [200, 100, 0], [220, 20, 60]],
                      ignore_index=255,
                      modalities={m: {"encoding": "png", "scale": scales[m]} for m in modalities})
    return root


@pytest.fixture
def modality_registry_restored():
    """Sensors a test declares (a dataset.yaml's, a model file's) are not registered for the rest of the session."""
    from rgbx.modalities import MODALITIES

    before = dict(MODALITIES._items)
    yield
    MODALITIES._items.clear()
    MODALITIES._items.update(before)


@pytest.fixture
def toy_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "toy")


def wait_for_checkpoint(proc, state: Path, iteration: int, timeout: float = 240.0) -> None:
    """Poll until the training process ``proc`` has saved a checkpoint at ``iteration`` or later in ``state``;
    fail if it finished first (too fast to be killed mid-run)."""
    import time

    from rgbx.engine.checkpoint import load_state

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and load_state(state)["iteration"] >= iteration:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
