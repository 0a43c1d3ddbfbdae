"""Tests for rgbx.data.transforms: joint geometry keeps every modality aligned, photometric ops stay in their lane."""

from __future__ import annotations

import pytest
import torch

from rgbx.data.transforms import (
    PHOTOMETRIC,
    ColorJitter,
    DepthHoles,
    DepthNoise,
    EvalTransform,
    EventDropout,
    GaussianBlur,
    GaussianNoise,
    Misalignment,
    PointDropout,
    ThermalGain,
    TrainTransform,
    crop_pad,
    empty_value,
    resize_crop,
    resize_crop_label,
    resize_label,
    resize_modality,
)
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality

H, W = 40, 64
ALL_OPS = (
    "color_jitter",
    "gaussian_blur",
    "depth_noise",
    "depth_holes",
    "thermal_gain",
    "gaussian_noise",
    "point_dropout",
    "event_dropout",
    "misalignment",
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinate_sample(label_axis: str = "x") -> dict:
    """Every modality encodes its own pixel coordinates; the label holds x (or y)."""
    g = gen(1234)
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    holes = torch.rand(H, W, generator=g) < 0.2
    lidar_pts = torch.rand(H, W, generator=g) < 0.15
    event_pts = torch.rand(H, W, generator=g) < 0.3
    index = ys * W + xs + 1  # 1 .. H*W, 0 = no point
    inputs = {
        "rgb": torch.stack([xs, ys, xs + 1000.0]),  # channel 2 > 500 marks real (non-padded) content
        "depth": torch.where(holes, 0.0, index)[None],
        "thermal": xs[None].clone(),
        "lidar": torch.where(lidar_pts, index, 0.0)[None],
        "event": torch.stack([torch.where(event_pts, xs + 1, 0.0), torch.where(event_pts, ys + 1, 0.0)]),
    }
    label = (xs if label_axis == "x" else ys).long()
    return {"inputs": inputs, "label": label, "meta": {"id": "coords"}}


def max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def decode(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i = index.long() - 1
    return i // W, i % W


@pytest.mark.parametrize("crop", [(48, 48), (24, 80)])
def test_alignment_every_modality_and_label(crop):
    transform = TrainTransform(crop_size=crop, scale_range=(0.5, 2.0), photometric=False)
    sx, sy = coordinate_sample("x"), coordinate_sample("y")
    src = sx["inputs"]
    src_values = {n: set(src[n].unique().tolist()) for n in ("depth", "lidar", "event")}
    seen = {"flip": 0, "noflip": 0, "pad": 0, "up": 0, "down": 0}
    for seed in range(40):
        ox = transform(sx, gen(seed))
        oy = transform(sy, gen(seed))  # same seed → same geometry; its label gives each pixel's source y
        lab_x, lab_y = ox["label"], oy["label"]
        out = ox["inputs"]
        for x in [*out.values(), lab_x]:
            assert tuple(x.shape[-2:]) == crop

        content = out["rgb"][2] > 500
        pad = ~content
        # padded label pixels are ignore, and only those
        assert torch.equal(lab_x == 255, pad)
        assert torch.equal(lab_y == 255, pad)
        seen["pad"] += bool(pad.any())
        row = lab_x[content.any(1)][0]
        row = row[row != 255]
        if len(row) > 1:
            seen["flip" if row[0] > row[-1] else "noflip"] += 1
            step = (row[1:] - row[:-1]).abs().float().mean()
            seen["up" if step < 1 else "down"] += bool(step != 1)

        ys, xs = lab_y[content], lab_x[content]  # exact source pixel of each output pixel (nearest)
        # dense bilinear: within interpolation tolerance of the nearest source coordinate
        for name, ch, ref in (("rgb", 0, xs), ("rgb", 1, ys), ("thermal", 0, xs)):
            diff = (out[name][ch][content] - ref.float()).abs()
            assert diff.max() <= 1.0, (name, ch, seed, diff.max())
            assert diff.mean() <= 0.6, (name, ch, seed, diff.mean())
        # depth (has an invalid value): nearest, exact, holes where the source had them
        assert torch.equal(out["depth"][0][content], src["depth"][0][ys, xs])
        assert (out["depth"][0][pad] == 0).all()
        # sparse: exact where the nearest source pixel holds a point; elsewhere a point from the same cell or nothing
        for name in ("lidar", "event"):
            o = out[name][:, content]
            s = src[name][:, ys, xs]
            has_src = (s != 0).any(0)
            assert torch.equal(o[:, has_src], s[:, has_src]), (name, seed)
            assert (out[name][:, pad] == 0).all()
            assert set(out[name].unique().tolist()) <= src_values[name]
        lidar = out["lidar"][0][content]
        py, px = decode(lidar[lidar != 0])
        assert max_abs(py - ys[lidar != 0]) <= 2 and max_abs(px - xs[lidar != 0]) <= 2
        ev = out["event"][:, content]
        assert torch.equal(ev[0] == 0, ev[1] == 0)  # channels of one event pixel travel together
        hit = ev[0] != 0
        assert max_abs(ev[0][hit] - 1 - xs[hit]) <= 2 and max_abs(ev[1][hit] - 1 - ys[hit]) <= 2
        assert src["event"][:, (ev[1][hit] - 1).long(), (ev[0][hit] - 1).long()].ne(0).all()
        assert set(lab_x.unique().tolist()) <= set(range(W)) | {255}
    # the seeds exercised every geometric case
    assert all(v > 0 for v in seen.values()), seen


def test_sparse_downsample_keeps_points_and_values():
    spec = get_modality("lidar")
    x = torch.zeros(1, 4, 4)
    x[0, 0, 0] = 7.5  # nearest neighbour (which samples pixel (1, 1) for cell (0, 0)) would lose this point
    x[0, 3, 2] = 3.0
    x[0, 2, 2] = 9.0  # same cell as (3, 2), further from... equally far, both valid: one is copied whole
    out = resize_modality(x, (2, 2), spec)
    assert out[0, 0, 0] == 7.5
    assert out[0, 1, 1] in (3.0, 9.0)
    assert out[0, 0, 1] == 0 and out[0, 1, 0] == 0
    # a point at the cell's nearest pixel wins over other points in the cell
    x = torch.zeros(1, 4, 4)
    x[0, 1, 1], x[0, 0, 0] = 2.0, 5.0
    assert resize_modality(x, (2, 2), spec)[0, 0, 0] == 2.0
    # denser sparse map: no averaging, more points kept than nearest subsampling would
    g = gen(0)
    x = torch.where(
        torch.rand(1, 64, 64, generator=g) < 0.1, torch.rand(1, 64, 64, generator=g) * 50 + 1, 0.0
    )
    out = resize_modality(x, (32, 32), spec)
    assert set(out.unique().tolist()) <= set(x.unique().tolist())
    nearest = x[:, 1::2, 1::2]
    assert (out != 0).sum() > 2 * (nearest != 0).sum()
    # event counts: integer, copied as whole pixel vectors
    ev = torch.randint(0, 4, (2, 30, 30), generator=g).float() * (torch.rand(1, 30, 30, generator=g) < 0.2)
    out = resize_modality(ev, (13, 13), get_modality("event"))
    pixels = {tuple(v) for v in ev.flatten(1).T.tolist()}
    assert {tuple(v) for v in out.flatten(1).T.tolist()} <= pixels


def test_depth_resize_never_blends_with_invalid():
    spec = get_modality("depth")
    g = gen(3)
    d = torch.rand(1, 30, 50, generator=g) * 10 + 1
    d[torch.rand(1, 30, 50, generator=g) < 0.3] = 0.0
    values = set(d.unique().tolist())
    for size in [(15, 25), (61, 99), (22, 37)]:
        assert set(resize_modality(d, size, spec).unique().tolist()) <= values


def test_dense_bilinear_resize():
    spec = get_modality("rgb")
    x = torch.full((3, 20, 30), 0.25)
    for size in [(10, 15), (41, 60)]:
        out = resize_modality(x, size, spec)
        assert out.shape == (3, *size)
        assert torch.allclose(out, torch.full_like(out, 0.25))
    ramp = torch.arange(30.0).expand(3, 20, 30)
    up = resize_modality(ramp, (40, 60), spec)
    assert len(up.unique()) > 30  # bilinear really interpolates dense maps
    lab = torch.randint(0, 5, (20, 30))
    assert set(resize_label(lab, (47, 13)).unique().tolist()) <= set(lab.unique().tolist())


@pytest.mark.parametrize("name", ["rgb", "thermal", "depth", "lidar", "event"])
def test_resize_crop_equals_resize_then_crop(name):
    """The training pipeline resamples only the crop window; it must give what resizing the whole image and then
    cropping gives: exactly for nearest-neighbour kinds, to float rounding for bilinear ones."""
    spec = get_modality(name)
    g = gen(5)
    x = torch.rand(spec.channels, 30, 50, generator=g) * 10
    if spec.sparse or spec.invalid_value is not None:
        x[:, torch.rand(30, 50, generator=g) < 0.4] = empty_value(spec)
    label = torch.randint(0, 7, (30, 50), generator=g)
    cases = [((30, 50), 3, 7), ((61, 99), 0, 0), ((61, 99), 31, 49), ((47, 71), 10, 40),  # enlarge; crop past edge
             ((15, 25), 0, 0), ((22, 37), 2, 5), ((30, 73), 4, 20)]  # shrink (whole image first); one axis only
    for new, top, left in cases:
        for size in [(24, 32), (40, 64)]:
            want = crop_pad(resize_modality(x, new, spec), top, left, size, empty_value(spec))
            got = resize_crop(x, new, top, left, size, spec)
            assert got.shape == want.shape == (spec.channels, *size)
            if spec.sparse or spec.invalid_value is not None:
                assert torch.equal(got, want), (name, new, top, left, size)
            else:
                assert (got - want).abs().max() <= 1e-5 * 10, (name, new, top, left, size)
            want_label = crop_pad(resize_label(label, new), top, left, size, 255)
            assert torch.equal(resize_crop_label(label, new, top, left, size, 255), want_label)



@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_bilinear_window_is_the_column_gather_bit_for_bit(dtype):
    """The window's column pass runs on transposed rows of only the source columns it reads; the values are those
    of gathering the columns in place, bit for bit (same taps, same lerps)."""
    from rgbx.data.transforms.geometric import _resize_bilinear_window, linear_taps

    x = (torch.rand(3, 30, 50, generator=gen(2)) * 255).to(dtype)
    for size, window in [((61, 99), (slice(0, 24), slice(0, 32))), ((61, 99), (slice(37, 61), slice(67, 99))),
                         ((45, 50), (slice(3, 40), slice(0, 50))), ((31, 51), (slice(0, 31), slice(1, 51)))]:
        y0, y1, wy = linear_taps(30, size[0], window[0])
        x0, x1, wx = linear_taps(50, size[1], window[1])
        rows = torch.lerp(x.float().index_select(-2, y0), x.float().index_select(-2, y1), wy[:, None])
        want = torch.lerp(rows.index_select(-1, x0), rows.index_select(-1, x1), wx).to(dtype)
        got = _resize_bilinear_window(x, size, window)
        assert got.is_contiguous() and torch.equal(got, want), (size, window)


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_is_brightness_contrast_saturation_hue_step_by_step(channels):
    """The jitter runs as one affine map per pixel; it equals the four steps done one after the other (with the
    same draws), clamp included."""
    import math

    from rgbx.data.transforms.photometric import _RGB2YIQ

    def gray(x):
        if x.shape[0] != 3:
            return x.mean(dim=0, keepdim=True)
        return (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(dim=0, keepdim=True)

    def step_by_step(x, b, c, s, h):
        x = x * b
        x = (x - gray(x).mean()) * c + gray(x).mean()
        if x.shape[0] == 3:
            x = gray(x) + (x - gray(x)) * s
            cos, sin = math.cos(2 * math.pi * h), math.sin(2 * math.pi * h)
            rot = torch.tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=torch.float64)
            x = torch.einsum("ij,jhw->ihw", (torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ).float(), x)
        return x.clamp(0.0, 1.0)

    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=1.0)
    spec = get_modality("rgb")
    clamped = 0
    for seed in range(8):
        x = torch.rand(channels, 24, 40, generator=gen(seed))
        g = gen(100 + seed)
        draws = [float(torch.rand((), generator=g)) for _ in range(5)]  # apply, then b, c, s, h as the op draws
        b, c, s, h = (1 + v * (2 * u - 1) for v, u in zip((0.4, 0.4, 0.4, 0.05), draws[1:], strict=True))
        want = step_by_step(x, b, c, s, h)
        got = jitter(x, gen(100 + seed), spec)
        assert got.shape == x.shape and (got - want).abs().max() <= 2e-6, seed
        clamped += int(((want == 0) | (want == 1)).sum())
    assert clamped > 0  # the clamp was reached

def test_gaussian_blur_matches_a_convolution():
    """The blur (sums of shifted views) against an independent 2-D convolution with the outer-product kernel and
    replicated edges, with and without invalid pixels."""
    import math

    import torch.nn.functional as F

    rgb, depth = get_modality("rgb"), get_modality("depth")
    g = gen(8)
    x = torch.rand(3, 23, 31, generator=g)
    for sigma in (0.4, 1.5):
        blur = GaussianBlur(sigma=(sigma, sigma), p=1.0)
        r = max(1, math.ceil(3 * sigma))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k1 = torch.exp(-(t**2) / (2 * sigma**2))
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :])[None, None]
        want = F.conv2d(F.pad(x[:, None], (r, r, r, r), mode="replicate"), k2)[:, 0]
        assert torch.allclose(blur(x, gen(0), rgb), want, atol=1e-6)
        d = torch.rand(1, 23, 31, generator=g) * 5 + 1
        d[0, 5:9, 3:12] = 0.0
        out = blur(d, gen(0), depth)
        assert torch.equal(out[0, 5:9, 3:12], torch.zeros(4, 9))  # holes stay holes
        valid = (d != 0).float()
        num = F.conv2d(F.pad((d * valid)[:, None], (r, r, r, r), mode="replicate"), k2)[:, 0]
        den = F.conv2d(F.pad(valid[:, None], (r, r, r, r), mode="replicate"), k2)[:, 0]
        ok = valid.bool()
        assert torch.allclose(out[ok], (num / den.clamp_min(1e-6))[ok], atol=1e-5)


def test_gaussian_blur_with_a_fixed_kernel_is_torchvisions():
    """kernel_size=3, sigma 0.8, padding="reflect": torchvision's gaussian_blur(img, 3) (DELIVER's
    RandomGaussianBlur), everywhere; with the edge replicated (the default), equal away from the border."""
    import torchvision.transforms.functional as TF

    x = torch.rand(3, 23, 31, generator=gen(3))
    want = TF.gaussian_blur(x, [3, 3], [0.8, 0.8])
    rgb = get_modality("rgb")
    mirrored = GaussianBlur(sigma=(0.8, 0.8), p=1.0, kernel_size=3, padding="reflect")(x, gen(0), rgb)
    assert torch.allclose(mirrored, want, atol=1e-6)
    out = GaussianBlur(sigma=(0.8, 0.8), p=1.0, kernel_size=3)(x, gen(0), rgb)
    assert torch.allclose(out[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=1e-6)
    assert not torch.allclose(out, want, atol=1e-4)  # the border differs
    assert not torch.allclose(out, x, atol=1e-3)
    tiny = GaussianBlur(sigma=(2.0, 2.0), p=1.0, padding="reflect")(x[:, :3, :3], gen(0), rgb)  # radius 6 > 3 pixels
    assert tiny.shape == (3, 3, 3)
    with pytest.raises(ConfigError, match="kernel_size must be an odd number"):
        GaussianBlur(kernel_size=4)
    with pytest.raises(ConfigError, match="padding must be 'replicate' or 'reflect'"):
        GaussianBlur(padding="zeros")


def test_a_sensor_given_its_own_ops_gets_those_and_only_those():
    """data.photometric_ops: rgb gets one brightness-only jitter always applied, lidar none (its spec's point dropout
    would fire at p=1), thermal, not listed, keeps its spec's ops as drawn without the setting."""
    from rgbx.data.transforms.photometric import build_photometric_ops

    ops = build_photometric_ops({"rgb": [{"name": "color_jitter", "p": 1.0, "brightness": 0.5, "contrast": 0.0,
                                          "saturation": 0.0, "hue": 0.0}], "lidar": []})
    sample = realistic_sample()
    always = {"point_dropout": PointDropout(p=1.0, fraction=(0.5, 0.5))}
    own = TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=always, sensor_ops=ops)
    spec = TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=always)
    out, ref = own(sample, gen(5)), spec(sample, gen(5))
    ratio = out["inputs"]["rgb"] / sample["inputs"]["rgb"]
    assert 0.5 <= float(ratio.mean()) <= 1.5 and float(ratio.std()) < 1e-4 and float(ratio.mean()) != 1.0
    assert torch.equal(out["inputs"]["lidar"], sample["inputs"]["lidar"])
    assert not torch.equal(ref["inputs"]["lidar"], sample["inputs"]["lidar"])  # the spec's op, had lidar none given
    assert torch.equal(out["inputs"]["thermal"], ref["inputs"]["thermal"])
    off = TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=False, sensor_ops=ops)
    assert torch.equal(off(sample, gen(5))["inputs"]["rgb"], sample["inputs"]["rgb"])  # photometric=False: none


@pytest.mark.parametrize("config, message", [
    ({"rgb": "color_jitter"}, r"data.photometric_ops.rgb: expected a list of photometric ops"),
    ({"rgb": ["colour_jitter"]}, r"data.photometric_ops.rgb\[0\]: unknown photometric op 'colour_jitter'"),
    ({"rgb": ["gaussian_blur", {"name": "color_jitter", "strength": 2}]},
     r"data.photometric_ops.rgb\[1\]: color_jitter has no parameter 'strength' \(its parameters: brightness"),
    ({"rgb": [{"p": 0.2}]}, r"data.photometric_ops.rgb\[0\]: expected an op name or \{name: OP"),
    ({"rgb": [{"name": "color_jitter", "p": 5}]}, r"rgb\[0\]: color_jitter p: expected a number in \[0, 1\], got 5"),
    ({"rgb": [{"name": "color_jitter", "hue": 0.7}]}, r"rgb\[0\]: color_jitter hue: expected a number in \[0, 0.5\]"),
    ({"rgb": [{"name": "color_jitter", "saturation": -0.1}]}, r"color_jitter saturation: expected a number >= 0"),
    ({"rgb": [{"name": "color_jitter", "hue": "high"}]}, r"rgb\[0\]: color_jitter hue: expected a number .*'high'"),
    ({"rgb": [{"name": "color_jitter", "brightness": True}]}, r"color_jitter brightness: expected a number"),
    ({"rgb": [{"name": "gaussian_blur", "sigma": 3}]}, r"rgb\[0\]: gaussian_blur sigma: expected a range \[min, max\]"),
    ({"rgb": [{"name": "gaussian_blur", "sigma": [2, 1]}]}, r"gaussian_blur sigma: .* with min <= max, got \[2, 1\]"),
    ({"depth": [{"name": "depth_holes", "max_holes": 2.5}]}, r"depth\[0\]: depth_holes max_holes: expected an integer"),
    ({"lidar": [{"name": "point_dropout", "fraction": [0, 2]}]}, r"lidar\[0\]: point_dropout fraction: .* in \[0, 1\]"),
    ({"thermal": [{"name": "thermal_gain", "gain": "x"}]}, r"thermal\[0\]: thermal_gain gain: expected a range"),
    ({"depth": [{"name": "misalignment", "max_fraction": "x"}]}, r"misalignment max_fraction: expected a number"),
])
def test_bad_photometric_ops_name_the_entry(config, message):
    from rgbx.data.transforms.photometric import build_photometric_ops

    with pytest.raises(ConfigError, match=message):
        build_photometric_ops(config)


def photometric_only(active: dict) -> TrainTransform:
    ops = {name: None for name in ALL_OPS}
    ops.update(active)
    return TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=ops)


def realistic_sample() -> dict:
    g = gen(99)
    depth = torch.rand(1, H, W, generator=g) * 20 + 0.5
    depth[torch.rand(1, H, W, generator=g) < 0.2] = 0.0
    lidar = torch.where(
        torch.rand(1, H, W, generator=g) < 0.1, torch.rand(1, H, W, generator=g) * 50 + 1, 0.0
    )
    return {
        "inputs": {
            "rgb": torch.rand(3, H, W, generator=g),
            "depth": depth,
            "thermal": torch.rand(1, H, W, generator=g),
            "lidar": lidar,
            "event": torch.randint(0, 5, (2, H, W), generator=g).float(),
        },
        "label": torch.randint(0, 10, (H, W), generator=g),
        "meta": {"id": "real", "attributes": {"night": True}},
    }


@pytest.mark.parametrize(
    "active, changed",
    [
        ({"color_jitter": ColorJitter(p=1.0)}, {"rgb"}),
        ({"gaussian_blur": GaussianBlur(p=1.0, sigma=(1.0, 1.0))}, {"rgb"}),
        ({"depth_noise": DepthNoise(p=1.0)}, {"depth"}),
        ({"depth_holes": DepthHoles(p=1.0)}, {"depth"}),
        ({"thermal_gain": ThermalGain(p=1.0)}, {"thermal"}),
        ({"gaussian_noise": GaussianNoise(p=1.0, std=(0.01, 0.02))}, {"thermal"}),
        ({"point_dropout": PointDropout(p=1.0, fraction=(0.5, 0.5))}, {"lidar"}),
        ({"event_dropout": EventDropout(p=1.0, fraction=(0.5, 0.5))}, {"event"}),
    ],
)
def test_photometric_op_changes_only_its_modality(active, changed):
    sample = realistic_sample()
    out = photometric_only(active)(sample, gen(5))
    for name, x in sample["inputs"].items():
        same = torch.equal(out["inputs"][name], x)
        assert same != (name in changed), name
    assert torch.equal(out["label"], sample["label"])


def test_misalignment_moves_one_sensor_against_the_others_and_the_labels():
    """data.photometric_ops={depth: [misalignment]}: depth (which encodes its pixels' coordinates) moves by one offset
    per sample, at most max_fraction of the shorter side, the border left without measurement; the label and the
    other sensors stay where they were."""
    sample = coordinate_sample()
    ops = {name: None for name in ALL_OPS}
    transform = TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=ops,
                               sensor_ops={"depth": [Misalignment(max_fraction=0.2, p=1.0)]})
    offsets = set()
    for seed in range(10):
        out = transform(sample, gen(seed))
        depth = out["inputs"]["depth"][0]
        kept = depth != 0
        rows, cols = kept.nonzero(as_tuple=True)
        ys, xs = decode(depth[kept])
        dy, dx = set((rows - ys).tolist()), set((cols - xs).tolist())
        assert len(dy) == len(dx) == 1  # the frame moved as a whole
        dy, dx = dy.pop(), dx.pop()
        assert (dy * dy + dx * dx) ** 0.5 <= 0.2 * min(H, W) + 1
        assert int(kept.sum()) <= int((sample["inputs"]["depth"] != 0).sum())  # nothing invented
        assert torch.equal(out["label"], sample["label"]) and torch.equal(out["inputs"]["rgb"], sample["inputs"]["rgb"])
        offsets.add((dy, dx))
    assert len(offsets) > 5
    never = TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=ops,
                           sensor_ops={"depth": [Misalignment(max_fraction=0.2, p=0.0)]})
    assert torch.equal(never(sample, gen(0))["inputs"]["depth"], sample["inputs"]["depth"])
    with pytest.raises(ConfigError, match=r"misalignment max_fraction: expected a share of the frame in \[0, 1\)"):
        Misalignment(max_fraction=1.5)


def test_photometric_ops_respect_validity_and_ranges():
    sample = realistic_sample()
    src = sample["inputs"]
    depth_invalid = src["depth"] == 0
    transform = TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_prob=0.0)  # the specs' own ops
    changed = set()
    for seed in range(30):
        out = transform(sample, gen(seed))["inputs"]
        changed |= {n for n in src if not torch.equal(out[n], src[n])}
        assert out["rgb"].min() >= 0 and out["rgb"].max() <= 1
        assert (out["depth"][depth_invalid] == 0).all()  # invalid stays invalid (holes may add more)
        assert (out["depth"] >= 0).all()
        kept = out["lidar"] != 0
        assert torch.equal(out["lidar"][kept], src["lidar"][kept])  # dropout only removes points
        ev = out["event"]
        assert torch.equal(ev, ev.round()) and (ev >= 0).all() and (ev <= src["event"]).all()
    assert changed == set(src)


def test_depth_noise_keeps_valid_and_invalid():
    spec = get_modality("depth")
    d = realistic_sample()["inputs"]["depth"]
    out = DepthNoise(p=1.0, relative_std=0.5)(d, gen(0), spec)
    assert torch.equal(out == 0, d == 0)
    assert not torch.equal(out, d)
    holes = DepthHoles(p=1.0)(d, gen(0), spec)
    assert ((holes == d) | (holes == 0)).all() and (holes == 0).sum() > (d == 0).sum()
    with pytest.raises(ConfigError):
        DepthHoles(p=1.0)(torch.rand(1, 8, 8), gen(0), get_modality("thermal"))


def test_registry_names():
    assert set(PHOTOMETRIC.names()) == set(ALL_OPS)
    for name in ("rgb", "depth", "thermal", "lidar", "event"):
        assert all(op in PHOTOMETRIC for op in get_modality(name).photometric)


def test_same_seed_same_output_and_seed_matters():
    sample = realistic_sample()
    transform = TrainTransform(crop_size=(32, 32))
    a, b, c = (transform(sample, gen(s)) for s in (7, 7, 8))
    for name in sample["inputs"]:
        assert torch.equal(a["inputs"][name], b["inputs"][name])
    assert torch.equal(a["label"], b["label"])
    assert any(not torch.equal(a["inputs"][n], c["inputs"][n]) for n in sample["inputs"])


def test_resize_factors_from_a_list_of_scales():
    """``scales`` (CMX / DFormer's discrete choice): every factor drawn is one of them, each turns up, and the draws
    after the scale (crop position, flip, photometric seed) are those of the range-drawn transform."""
    sample = coordinate_sample()
    listed = TrainTransform(crop_size=(16, 16), scales=[0.5, 0.75, 1.5], geometric_on="batch")
    ranged = TrainTransform(crop_size=(16, 16), geometric_on="batch")
    drawn = [listed(sample, gen(s))["geometry"] for s in range(60)]
    assert {float(d[0]) for d in drawn} == {0.5, 0.75, 1.5}
    for s, d in enumerate(drawn[:10]):
        assert torch.equal(d[1:], ranged(sample, gen(s))["geometry"][1:])
    with pytest.raises(ConfigError, match="scales must be a non-empty list of positive"):
        TrainTransform(scales=[1.0, 0.0])


def test_centred_padding_is_cmx_and_dformers_random_crop_pad_to_shape():
    """CMX / DFormer normalise, then ``random_crop_pad_to_shape``: an image smaller than the crop goes in its middle
    (``pad_image_to_shape``: pad // 2 before, the rest after) with 0 around it, the label with 255. With
    ``pad_fill`` the normalisation's mean (what the trainer gives for ``data.crop_padding=centre``) and
    ``pad_centre``, rgbx's normalised crop is that array, written out here with NumPy."""
    import numpy as np

    from rgbx.data import normalize_sample

    g = torch.Generator().manual_seed(0)
    rgb, label = torch.rand(3, 8, 10, generator=g), torch.randint(0, 5, (8, 10), generator=g)
    spec = get_modality("rgb")
    transform = TrainTransform(crop_size=(13, 15), scales=[1.0], hflip_prob=0.0, photometric=False,
                               pad_fill={"rgb": list(spec.mean)}, pad_centre=True)
    out = normalize_sample(transform({"inputs": {"rgb": rgb}, "label": label, "meta": {}}, gen(0)))
    normalised = spec.normalize(rgb).numpy().transpose(1, 2, 0)  # CMX: H, W, C after normalize()
    margin = ((13 - 8) // 2, (13 - 8) - (13 - 8) // 2), ((15 - 10) // 2, (15 - 10) - (15 - 10) // 2)
    want = np.pad(normalised, (*margin, (0, 0)), constant_values=0).transpose(2, 0, 1)
    assert torch.allclose(out["inputs"]["rgb"], torch.from_numpy(want), atol=1e-6)
    assert torch.equal(out["label"], torch.from_numpy(np.pad(label.numpy(), margin, constant_values=255)))
    default = TrainTransform(crop_size=(13, 15), scales=[1.0], hflip_prob=0.0, photometric=False)(
        {"inputs": {"rgb": rgb}, "label": label, "meta": {}}, gen(0))
    assert torch.equal(default["inputs"]["rgb"][:, :8, :10], rgb) and (default["inputs"]["rgb"][:, 8:] == 0).all()
    with pytest.raises(ConfigError, match=r"pad_fill\['rgb'\]: expected 3 value"):
        TrainTransform(pad_fill={"rgb": [0.5]})


def test_geometry_does_not_depend_on_which_modalities_are_present():
    sample = coordinate_sample()
    transform = TrainTransform(crop_size=(32, 32))
    full = transform(sample, gen(11))
    only_depth = transform({**sample, "inputs": {"depth": sample["inputs"]["depth"]}}, gen(11))
    assert torch.equal(full["inputs"]["depth"], only_depth["inputs"]["depth"])
    assert torch.equal(full["label"], only_depth["label"])


def test_missing_modalities_and_no_label_pass_through():
    sample = realistic_sample()
    meta = sample["meta"]
    partial = {"inputs": {"thermal": sample["inputs"]["thermal"]}, "label": None, "meta": meta, "extra": 1}
    out = TrainTransform(crop_size=(16, 24))(partial, gen(0))
    assert set(out["inputs"]) == {"thermal"}
    assert out["inputs"]["thermal"].shape == (1, 16, 24)
    assert out["label"] is None and out["meta"] is meta and out["extra"] == 1

    label_only = TrainTransform(crop_size=(16, 24))(
        {"inputs": {}, "label": sample["label"], "meta": meta}, gen(0)
    )
    assert label_only["inputs"] == {} and label_only["label"].shape == (16, 24)
    empty = TrainTransform(crop_size=(16, 24))({"inputs": {}, "label": None, "meta": meta}, gen(0))
    assert empty["inputs"] == {} and empty["label"] is None

    ev = EvalTransform()(partial, gen(0))
    assert torch.equal(ev["inputs"]["thermal"], partial["inputs"]["thermal"])
    assert ev["label"] is None and ev["meta"] is meta


def test_eval_transform_is_identity_at_label_resolution():
    sample = realistic_sample()
    out = EvalTransform()(sample, gen(0))
    for name, x in sample["inputs"].items():
        assert torch.equal(out["inputs"][name], x)
    assert torch.equal(out["label"], sample["label"])
    assert out["meta"] is sample["meta"]


def test_mismatched_sizes_and_bad_config_raise():
    sample = realistic_sample()
    bad = {**sample, "inputs": {**sample["inputs"], "depth": torch.ones(1, H // 2, W // 2)}}
    with pytest.raises(DataError, match="differ in size"):
        TrainTransform(crop_size=(16, 16))(bad, gen(0))
    with pytest.raises(DataError, match="differ in size"):
        EvalTransform()(bad)
    with pytest.raises(ConfigError):
        TrainTransform(scale_range=(2.0, 0.5))
    with pytest.raises(ConfigError):
        TrainTransform(crop_size=(0, 10))
