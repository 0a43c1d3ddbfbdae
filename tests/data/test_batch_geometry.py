"""The geometric step on a whole batch (``TrainTransform(geometric_on="batch")`` + :class:`BatchGeometry`) gives the
per-sample pipeline's batches: same draws, same rules, labels and nearest-neighbour maps bit for bit."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from rgbx.data import collate, normalize_sample
from rgbx.data.sample import GeometryDraws
from rgbx.data.transforms import BatchGeometry, TrainTransform
from rgbx.data.transforms.batch_geometry import bilinear_taps, nearest_taps
from rgbx.errors import ConfigError, DataError

MODALITIES = ("rgb", "depth", "thermal", "lidar", "event")


def make_sample(h: int, w: int, seed: int, modalities=MODALITIES) -> dict:
    """Physical-unit maps of every kind: bilinear (rgb, thermal), nearest with holes (depth), sparse (lidar,
    events)."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(1, h, w, generator=g) * 10 + 0.5
    depth[torch.rand(1, h, w, generator=g) < 0.2] = 0.0
    points = torch.rand(h, w, generator=g) < 0.15
    inputs = {
        "rgb": torch.rand(3, h, w, generator=g),
        "depth": depth,
        "thermal": torch.rand(1, h, w, generator=g),
        "lidar": torch.where(points, torch.rand(3, h, w, generator=g) * 40 + 1, 0.0),
        "event": torch.randint(0, 4, (2, h, w), generator=g).float(),
    }
    return {"inputs": {n: x for n, x in inputs.items() if n in modalities},
            "label": torch.randint(0, 7, (h, w), generator=g), "meta": {"id": f"s{seed}"}}


def both_ways(samples, crop, seed, **options):
    """The per-sample pipeline's batch, and the batch-geometry one, from the same samples and generators."""
    per_sample = TrainTransform(crop_size=crop, geometric_on="sample", **options)
    per_batch = TrainTransform(crop_size=crop, geometric_on="batch", **options)

    def generators():
        return [torch.Generator().manual_seed(seed * 100 + i) for i in range(len(samples))]

    expected = collate([normalize_sample(per_sample(s, g)) for s, g in zip(samples, generators())])
    deferred = collate([normalize_sample(per_batch(s, g)) for s, g in zip(samples, generators())])
    return expected, deferred, per_batch.batch_geometry()


@pytest.mark.parametrize("seed", range(12))
def test_the_batch_step_gives_the_per_sample_batch(seed):
    """Samples of different sizes (padded when collated), one without most sensors, resize factors that shrink
    (antialiased, point-keeping) and enlarge, crops larger than the resized image (padding), flips; the photometric
    ops on (they run in the workers either way, from the same draws)."""
    samples = [make_sample(20, 30, seed), make_sample(31, 40, seed + 1), make_sample(24, 32, seed + 2, ("rgb",)),
               make_sample(17, 45, seed + 3)]
    expected, deferred, step = both_ways(samples, (24, 32), seed, scale_range=(0.4, 2.2))
    assert deferred.geometry is not None and deferred.inputs["rgb"].shape[-2:] == (31, 45)  # padded to the largest
    got = step(deferred)
    assert got.geometry is None
    assert torch.equal(got.label, expected.label)
    for name in MODALITIES:
        assert got.inputs[name].shape == expected.inputs[name].shape, name
        assert torch.equal(got.present[name], expected.present[name]), name
        if name in ("rgb", "thermal"):  # bilinear: the same weights, summed in another order
            torch.testing.assert_close(got.inputs[name], expected.inputs[name], rtol=0, atol=2e-6)
        else:  # nearest neighbour, point-keeping and padding: copies
            assert torch.equal(got.inputs[name], expected.inputs[name]), name


CENTRE = {"rgb": [0.485, 0.456, 0.406], "depth": [5.06], "thermal": [0.3], "lidar": [2.0],
          "event": [0.25, 0.5]}


@pytest.mark.parametrize("seed", range(6))
def test_centred_padding_with_given_values_is_the_same_on_the_batch(seed):
    """data.crop_padding=centre: the crop pads on both sides with the given values (the network's zero input); the
    batch step places and fills it as the per-sample pipeline does, flips included."""
    samples = [make_sample(20, 30, seed), make_sample(31, 40, seed + 1), make_sample(17, 45, seed + 3)]
    expected, deferred, step = both_ways(samples, (24, 32), seed, scale_range=(0.4, 1.3), pad_fill=CENTRE,
                                         pad_centre=True)
    got = step(deferred)
    assert torch.equal(got.label, expected.label)
    for name in MODALITIES:
        if name in ("rgb", "thermal"):
            torch.testing.assert_close(got.inputs[name], expected.inputs[name], rtol=0, atol=2e-6)
        else:
            assert torch.equal(got.inputs[name], expected.inputs[name]), name
    padded = expected.label == 255
    assert padded[:, 0].any() and padded[:, -1].any() and padded[:, :, 0].any()  # before the image as well as after
    depth = expected.inputs["depth"] * 10.0  # rgbx's depth: metres / 10
    assert torch.allclose(depth[padded[:, None]], torch.tensor(5.06))


def test_every_case_is_met_by_the_draws():
    """The draws of the comparison above do cover shrinking, enlarging, padding and flipping."""
    step = BatchGeometry((24, 32))
    draws, sizes = [], []
    for seed in range(12):
        for i, size in enumerate([(20, 30), (31, 40), (24, 32), (17, 45)]):
            s = TrainTransform(crop_size=(24, 32), scale_range=(0.4, 2.2), geometric_on="batch",
                               photometric=False)(make_sample(*size, 0, ("rgb",)), torch.Generator().manual_seed(
                                   seed * 100 + i))
            draws.append(s["geometry"])
            sizes.append(size)
    plans = step.plans(GeometryDraws(torch.stack(draws), torch.tensor(sizes)))
    assert any(p.new[0] < p.size[0] for p in plans) and any(p.new[0] > p.size[0] for p in plans)
    assert any(p.new[0] < 24 or p.new[1] < 32 for p in plans)  # padded
    assert any(p.flip for p in plans) and not all(p.flip for p in plans)


@pytest.mark.parametrize("n_in, n_out", [(7, 3), (31, 13), (40, 31), (480, 300), (640, 333), (45, 44)])
def test_antialiased_taps_are_those_of_interpolate(n_in, n_out):
    x = torch.rand(1, 2, n_in, n_in, generator=torch.Generator().manual_seed(n_in))
    ref = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False, antialias=True)
    index, weight, valid = bilinear_taps(n_in, n_out, 0, n_out, False, antialias=True)
    assert valid.all() and torch.allclose(weight.sum(1), torch.ones(n_out))
    rows = (x[0][:, index] * weight[:, :, None]).sum(2)  # (C, n_out, n_in)
    out = (rows[:, :, index] * weight).sum(3)
    torch.testing.assert_close(out, ref[0], rtol=0, atol=5e-7)


@pytest.mark.parametrize("n_in, n_out", [(7, 13), (31, 62), (480, 959), (20, 20)])
def test_enlarging_taps_are_plain_bilinear(n_in, n_out):
    x = torch.rand(1, 1, n_in, n_in, generator=torch.Generator().manual_seed(n_in))
    ref = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False)
    index, weight, _ = bilinear_taps(n_in, n_out, 0, n_out, False, antialias=False)
    assert index.shape[1] == 2
    out = (x[0, 0][index] * weight[:, :, None]).sum(1)
    out = (out[:, index] * weight).sum(2)
    torch.testing.assert_close(out, ref[0, 0], rtol=0, atol=5e-7)


def test_taps_crop_pad_and_flip():
    index, valid = nearest_taps(10, 20, 14, 8, flip=False)  # crop 8 from 14 of 20: the last 2 are padding
    assert valid.tolist() == [True] * 6 + [False] * 2
    assert index[:6, 0].tolist() == [7, 7, 8, 8, 9, 9]
    flipped, fvalid = nearest_taps(10, 20, 14, 8, flip=True)  # mirrored: the padding comes first
    assert fvalid.tolist() == valid.flip(0).tolist() and torch.equal(flipped[2:], index[:6].flip(0))


def test_the_step_runs_where_the_batch_is_and_keeps_its_draws_on_the_host():
    samples = [make_sample(20, 30, 1), make_sample(20, 30, 2)]
    _, deferred, step = both_ways(samples, (16, 16), 3, scale_range=(0.5, 2.0))
    moved = deferred.to("cpu")
    assert moved.geometry is deferred.geometry
    assert pickle.loads(pickle.dumps(deferred)).geometry.draws.equal(deferred.geometry.draws)  # to a worker and back
    assert step(moved).inputs["rgb"].shape == (2, 3, 16, 16)


def test_misuse_is_named():
    samples = [make_sample(20, 30, 1), make_sample(20, 30, 2)]
    expected, deferred, step = both_ways(samples, (16, 16), 3)
    with pytest.raises(DataError, match="carries no geometric draws"):
        step(expected)
    with pytest.raises(DataError, match="1 geometric draws for a batch of 2"):
        step(deferred.replace(geometry=GeometryDraws(deferred.geometry.draws[:1], deferred.geometry.sizes[:1])))
    one = TrainTransform(crop_size=(16, 16), geometric_on="batch")(samples[0], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="with and without geometric draws"):
        collate([normalize_sample(one), normalize_sample(samples[1])])
    odd = {**one, "label": one["label"][:10]}
    with pytest.raises(ValueError, match=r"maps of sizes \[\(10, 30\), \(20, 30\)\]"):
        collate([odd, one])
    with pytest.raises(ConfigError, match="geometric_on must be 'sample' or 'batch'"):
        TrainTransform(geometric_on="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_step_gives_the_cpu_result_without_a_device_sync():
    """On the GPU, as the trainer runs it (pinned batch, non-blocking copy): the CPU step's batch, and no device →
    host read-back once the per-device empty values exist (sync debug mode "error" raises on one)."""
    samples = [make_sample(20, 30, 5), make_sample(31, 40, 6), make_sample(24, 32, 7, ("rgb",))]
    _, deferred, step = both_ways(samples, (24, 32), 4, scale_range=(0.4, 2.2))
    expected = step(deferred)
    moved = deferred.pin_memory().to("cuda", non_blocking=True)
    step(moved)  # makes the empty values on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = step(moved)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.label.cpu(), expected.label)
    for name, x in expected.inputs.items():
        assert got.inputs[name].is_cuda
        if name in ("rgb", "thermal"):
            torch.testing.assert_close(got.inputs[name].cpu(), x, rtol=0, atol=2e-6)
        else:
            assert torch.equal(got.inputs[name].cpu(), x), name
