"""Test-time inference: multi-scale + flip averaging and sliding windows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import rgbx
from rgbx.data.sample import PresenceMasks
from rgbx.engine.inference import SlidingWindow, predict_logits, window_starts
from rgbx.errors import ConfigError


def _model():
    torch.manual_seed(0)
    return rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "lidar"], num_classes=3,
                             head_channels=16).eval()


def _inputs():
    lidar = torch.zeros(2, 1, 32, 48)
    lidar[:, :, ::4, ::3] = 1.5
    return {"rgb": torch.randn(2, 3, 32, 48), "lidar": lidar}


@torch.no_grad()
def test_single_scale_is_the_plain_forward():
    model, x = _model(), _inputs()
    torch.testing.assert_close(predict_logits(model, x), model(x).logits)


@torch.no_grad()
def test_flip_averages_the_flipped_pass():
    model, x = _model(), _inputs()
    plain = model(x).logits.softmax(1)
    flipped = model({m: v.flip(-1) for m, v in x.items()}).logits.flip(-1).softmax(1)
    torch.testing.assert_close(predict_logits(model, x, flip=True), (plain + flipped) / 2)


@torch.no_grad()
def test_multiscale_output_at_input_size_and_a_distribution():
    model, x = _model(), _inputs()
    probs = predict_logits(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (2, 3, 32, 48)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 48))


# -- sliding windows -------------------------------------------------------------------------------------------------
class _Pointwise(torch.nn.Module):
    """A model without spatial context (a 1×1 convolution of the concatenated sensors): any window sees the same
    values at a pixel as the whole image does, so sliding windows must reproduce the whole-image logits exactly
    wherever the windows are placed and however often they overlap."""

    modalities = ("rgb", "lidar")

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3, 1)
        self.calls = []

    def forward(self, inputs, present=None):
        x = torch.cat([inputs["rgb"], inputs["lidar"]], 1)
        self.calls.append(tuple(x.shape[-2:]))
        return SimpleNamespace(logits=self.conv(x))


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("window, stride", [((16, 20), None), ((16, 20), (5, 7)), ((32, 48), None), ((40, 64), None),
                                            ((7, 11), (7, 11)), ((20, 48), (3, 48))])
@torch.no_grad()
def test_sliding_windows_cover_every_pixel_and_average_the_overlaps(window, stride, batch):
    model, x = _Pointwise(), _inputs()
    whole = model(x).logits
    model.calls.clear()
    sw = SlidingWindow(window, stride, batch=batch)
    sliding = predict_logits(model, x, window=sw)
    torch.testing.assert_close(sliding, whole, rtol=1e-6, atol=1e-6)
    ys = window_starts(32, min(window[0], 32), sw.stride[0])
    xs = window_starts(48, min(window[1], 48), sw.stride[1])
    positions = len(ys) * len(xs)
    # ``batch`` window positions per forward pass (one pass for a window covering the image)
    assert len(model.calls) == -(-positions // batch)
    assert set(model.calls) == {(min(window[0], 32), min(window[1], 48))}  # clipped to the image, never padded


@torch.no_grad()
def test_batched_windows_and_flips_give_the_logits_of_one_at_a_time_with_per_sample_presence():
    model, x = _model(), _inputs()
    present = {"rgb": torch.tensor([True, True]), "lidar": torch.tensor([True, False])}
    one = predict_logits(model, x, present, window=SlidingWindow((16, 24), (8, 12), batch=1))
    for batch in (2, 4, 9, 100):  # 3 × 3 = 9 positions: uneven groups, one group, fewer positions than the batch
        torch.testing.assert_close(predict_logits(model, x, present, window=SlidingWindow((16, 24), (8, 12), batch)),
                                   one, rtol=1e-4, atol=1e-5)
    # flip: the image and its mirror run as one batch; compare with the two passes run apart
    plain = model(x, present).logits.softmax(1)
    mirrored = model({m: v.flip(-1) for m, v in x.items()}, present).logits.flip(-1).softmax(1)
    torch.testing.assert_close(predict_logits(model, x, present, flip=True), (plain + mirrored) / 2,
                               rtol=1e-4, atol=1e-5)
    # masks the host knows about stay known on the host when they are repeated for the stacked windows and flips
    seen = []
    spy = model.forward

    def recording(inputs, mask=None):
        seen.append(mask)
        return spy(inputs, mask)

    apart = predict_logits(model, x, present, flip=True, window=SlidingWindow((16, 24), (8, 12), 1))
    model.forward = recording
    known = PresenceMasks(present, certain={"rgb"}, host={"lidar": present["lidar"]})
    together = predict_logits(model, x, known, flip=True, window=SlidingWindow((16, 24), (8, 12), 4))
    del model.forward
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)
    assert seen and all(isinstance(m, PresenceMasks) and m.certain == {"rgb"} for m in seen)
    stacked = [m for m in seen if len(m["lidar"]) > 2]
    assert stacked and all(torch.equal(m.host["lidar"], m["lidar"]) for m in stacked)
    # the sample without LiDAR is predicted without it, not with its zeros
    alone = model({m: v[1:] for m, v in x.items()}, {m: p[1:] for m, p in present.items()}).logits
    with_lidar = model({m: v[1:] for m, v in x.items()}).logits
    torch.testing.assert_close(model(x, present).logits[1:], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone, with_lidar, atol=1e-4)


def test_window_starts_end_at_the_border():
    assert window_starts(1408, 640, 427) == [0, 427, 768]
    assert window_starts(376, 376, 251) == [0]
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    for length, win, stride in [(97, 13, 5), (64, 64, 1), (50, 7, 7), (33, 10, 9)]:
        starts = window_starts(length, win, stride)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s:s + win] = True
        assert covered.all() and starts[-1] + win == length and max(starts) <= length - win


@torch.no_grad()
def test_sliding_windows_with_scales_and_flip_equal_the_whole_image_for_a_pointwise_model():
    model, x = _Pointwise(), _inputs()
    whole = predict_logits(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    sliding = predict_logits(model, x, scales=(0.5, 1.0, 1.5), flip=True, window=SlidingWindow((16, 16), (8, 12)))
    torch.testing.assert_close(sliding, whole, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_window_covering_the_image_is_the_plain_forward_and_smaller_ones_differ_for_a_real_model():
    model, x = _model(), _inputs()
    torch.testing.assert_close(predict_logits(model, x, window=SlidingWindow((32, 48))), model(x).logits)
    torch.testing.assert_close(predict_logits(model, x, window=SlidingWindow((64, 64))), model(x).logits)
    sliding = predict_logits(model, x, window=SlidingWindow((32, 32), (32, 16)))
    # two windows, overlapping on columns 16-31: outside the overlap each pixel is one window's logits
    left = model({m: v[..., :32] for m, v in x.items()}).logits
    right = model({m: v[..., 16:] for m, v in x.items()}).logits
    torch.testing.assert_close(sliding[..., :16], left[..., :16])
    torch.testing.assert_close(sliding[..., 32:], right[..., 16:])
    torch.testing.assert_close(sliding[..., 16:32], (left[..., 16:] + right[..., :16]) / 2)
    assert not torch.allclose(sliding, model(x).logits, atol=1e-4)  # context differs: the windows matter


@pytest.mark.parametrize("size, stride, batch, message", [((0, 10), None, 1, "both >= 1"),
                                                          ((10, 10), (11, 5), 1, "exceeds"),
                                                          ((10, 10), (0, 5), 1, "stride"),
                                                          ((10, 10), None, 0, "batch 0"),
                                                          ((10, 10), None, 2.5, "batch 2.5")])
def test_bad_sliding_windows_are_named(size, stride, batch, message):
    with pytest.raises(ConfigError, match=message):
        SlidingWindow(size, stride, batch)


def test_default_stride_is_two_thirds_of_the_window():
    assert SlidingWindow((480, 640)).stride == (320, 427)


def test_scaled_sizes_under_each_rule():
    from rgbx.engine.inference import scaled_size

    # DFormer's evaluate_msf: int(s × n), then up to a multiple of 32; SUN RGB-D's 530×730 resizes even at scale 1
    assert scaled_size((530, 730), 1.0, "dformer") == (544, 736)
    assert scaled_size((530, 730), 0.75, "dformer") == (416, 576)  # int(397.5) = 397 → 416, int(547.5) = 547 → 576
    assert scaled_size((480, 640), 1.0, "dformer") == (480, 640)
    assert scaled_size((530, 730), 0.75, "rgbx") == (398, 548)
    with pytest.raises(ConfigError, match="scale rule .mmseg.: expected one of rgbx, dformer, cmx"):
        scaled_size((530, 730), 1.0, "mmseg")


@torch.no_grad()
def test_the_dformer_scale_rule_follows_dformers_evaluate_msf():
    """DFormer's utils/val_mm.evaluate_msf written out: each scale's size rounded up to a multiple of 32, every input
    resized bilinearly with align_corners=True, the (flipped back) logits likewise to the input size, softmax
    summed. The rule gives the mean of the same terms; the default rule differs."""
    import math

    import torch.nn.functional as F

    model = _model()
    g = torch.Generator().manual_seed(3)
    x = {"rgb": torch.randn(1, 3, 45, 70, generator=g), "lidar": torch.randn(1, 1, 45, 70, generator=g)}
    scales = (0.5, 1.0, 1.25)
    total = torch.zeros(1, 3, 45, 70)
    for s in scales:
        size = tuple(int(math.ceil(int(s * n) / 32)) * 32 for n in (45, 70))
        scaled = {m: F.interpolate(v, size=size, mode="bilinear", align_corners=True) for m, v in x.items()}
        for flip in (False, True):
            view = {m: v.flip(3) for m, v in scaled.items()} if flip else scaled
            logits = model(view).logits
            logits = logits.flip(3) if flip else logits
            total += F.interpolate(logits, size=(45, 70), mode="bilinear", align_corners=True).softmax(1)
    ours = predict_logits(model, x, scales=scales, flip=True, scale_rule="dformer")
    torch.testing.assert_close(ours * 2 * len(scales), total, atol=2e-5, rtol=1e-5)
    default = predict_logits(model, x, scales=scales, flip=True)
    assert (default * 2 * len(scales) - total).abs().max() > 1e-3


@torch.no_grad()
def test_under_the_dformer_rule_a_window_larger_than_the_image_enlarges_the_image():
    """DFormer's slide_inference: an image smaller than the crop on either side is resized (bilinear, corners
    aligned) to the crop, run as one window, and its logits resized back; rgbx's own rule clips the window."""
    import torch.nn.functional as F

    model = _model()
    g = torch.Generator().manual_seed(4)
    x = {"rgb": torch.randn(1, 3, 40, 70, generator=g), "lidar": torch.randn(1, 1, 40, 70, generator=g)}
    window = SlidingWindow((48, 64), (32, 42))
    enlarged = {m: F.interpolate(v, size=(48, 64), mode="bilinear", align_corners=True) for m, v in x.items()}
    want = F.interpolate(model(enlarged).logits, size=(40, 70), mode="bilinear", align_corners=True)
    torch.testing.assert_close(predict_logits(model, x, window=window, scale_rule="dformer"), want)
    clipped = predict_logits(model, x, window=window)
    assert clipped.shape == want.shape and (clipped - want).abs().max() > 1e-3


def _cmx_sliding_eval_rgbX(model, x: dict, crop: tuple[int, int], scales, flip: bool) -> torch.Tensor:
    """CMX's engine/evaluator.py ``sliding_eval_rgbX`` / ``scale_process_rgbX`` / ``process_image_rgbX`` /
    ``val_func_process_rgbX`` written out on NumPy-style (H, W, C) arrays, one image, its names and its window
    arithmetic as they are (``s_x`` from ``stride[0]`` and ``crop_size[0]``), with torch's bilinear resize in place of
    OpenCV's (no antialiasing, half-pixel centres, as ``cv2.INTER_LINEAR``). The model has no input encoding, so
    CMX's zero padding after normalisation is rgbx's 0."""
    import math

    import numpy as np
    import torch.nn.functional as F

    def run(views):
        chw = {m: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1)))[None] for m, v in views.items()}
        score = model(chw).logits[0]
        if flip:
            score += model({m: v.flip(-1) for m, v in chw.items()}).logits[0].flip(-1)
        return score.exp()

    def pad(img, shape):  # utils/transforms.pad_image_to_shape with value 0
        ph, pw = max(shape[0] - img.shape[0], 0), max(shape[1] - img.shape[1], 0)
        margin = (ph // 2, ph // 2 + ph % 2, pw // 2, pw // 2 + pw % 2)
        return np.pad(img, ((margin[0], margin[1]), (margin[2], margin[3]), (0, 0))), margin

    def process(views):  # process_image_rgbX + val_func_process_rgbX + the margin cut
        padded = {m: pad(v, crop) for m, v in views.items()}
        margin = next(iter(padded.values()))[1]
        score = run({m: p for m, (p, _) in padded.items()})
        return score[:, margin[0]:score.shape[1] - margin[1], margin[2]:score.shape[2] - margin[3]]

    img = {m: v[0].numpy().transpose(1, 2, 0) for m, v in x.items()}
    ori_rows, ori_cols = next(iter(img.values())).shape[:2]
    processed = torch.zeros(model.num_classes, ori_rows, ori_cols)
    stride = (math.ceil(crop[0] * 2 / 3), math.ceil(crop[1] * 2 / 3))
    for s in scales:
        size = (round(ori_rows * s), round(ori_cols * s))
        scaled = {m: F.interpolate(torch.from_numpy(v.transpose(2, 0, 1).copy())[None], size=size, mode="bilinear",
                                   align_corners=False)[0].numpy().transpose(1, 2, 0) for m, v in img.items()}
        new_rows, new_cols = size
        if new_cols <= crop[1] or new_rows <= crop[0]:
            score = process(scaled)
        else:
            r_grid = int(np.ceil((new_rows - crop[0]) / stride[0])) + 1
            c_grid = int(np.ceil((new_cols - crop[1]) / stride[1])) + 1
            score = torch.zeros(model.num_classes, new_rows, new_cols)
            for grid_yidx in range(r_grid):
                for grid_xidx in range(c_grid):
                    s_x = grid_xidx * stride[0]
                    s_y = grid_yidx * stride[1]
                    e_x = min(s_x + crop[0], new_cols)
                    e_y = min(s_y + crop[1], new_rows)
                    s_x = e_x - crop[0]
                    s_y = e_y - crop[1]
                    temp = process({m: v[s_y:e_y, s_x:e_x, :] for m, v in scaled.items()})
                    score[:, s_y:e_y, s_x:e_x] += temp
        processed += F.interpolate(score[None], size=(ori_rows, ori_cols), mode="bilinear", align_corners=False)[0]
    return processed


@torch.no_grad()
@pytest.mark.parametrize("flip", [False, True])
def test_the_cmx_scale_rule_follows_cmxs_sliding_eval(flip):
    """Scales 0.75, 1, 1.25 on a 24×32 image with a 24×32 crop (NYU's 480×640 and its crop, divided by 20): 0.75 is
    padded to the crop, 1 is the crop, 1.25 (30×40) takes CMX's sliding path, whose windows (placed with the crop's
    sides swapped) cover only the bottom 2 rows."""
    model = _model()
    g = torch.Generator().manual_seed(5)
    x = {"rgb": torch.randn(1, 3, 24, 32, generator=g), "lidar": torch.randn(1, 1, 24, 32, generator=g)}
    scales = (0.75, 1.0, 1.25)
    want = _cmx_sliding_eval_rgbX(model, x, (24, 32), scales, flip)
    got = predict_logits(model, x, scales=scales, flip=flip, window=SlidingWindow((24, 32)), scale_rule="cmx")
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)
    one = predict_logits(model, x, scales=(1.25,), flip=flip, window=SlidingWindow((24, 32)), scale_rule="cmx")
    scored_rows = one[0].sum(0).sum(1).nonzero().flatten()
    assert scored_rows.min() == 22 and scored_rows.max() == 23  # 1.25's bottom 2 rows of 30, resized back to 24


@torch.no_grad()
def test_the_cmx_rule_pads_with_the_networks_zero_input():
    """CMX normalises first, then pads with 0: under a blue-first ImageNet encoding the border the first layer sees
    is 0 on every channel (rgbx's 0 would be the mean colour in the wrong channel order), the image itself encoded."""
    from rgbx.models.convert import reference_input_encoding

    encoding, _ = reference_input_encoding("cmx", ["rgb", "hha"])
    torch.manual_seed(0)
    model = rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "hha"], num_classes=3,
                              head_channels=16, input_encoding=encoding).eval()
    seen = []
    conv = dict(model.named_modules())["encoder.branches.rgb.stages.0.patch_embed.proj"]
    hook = conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = {"rgb": torch.randn(1, 3, 21, 27), "hha": torch.randn(1, 3, 21, 27)}
    try:
        predict_logits(model, x, window=SlidingWindow((24, 32)), scale_rule="cmx")
    finally:
        hook.remove()
    (net,) = seen
    assert net.shape == (1, 3, 24, 32)  # 3 rows: 1 above, 2 below; 5 columns: 2 left, 3 right
    inside = torch.zeros(24, 32, dtype=torch.bool)
    inside[1:22, 2:29] = True
    assert net[..., ~inside].abs().max() < 1e-5
    torch.testing.assert_close(net[..., 1:22, 2:29], model.encoder.input_encoding({"rgb": x["rgb"]})["rgb"])


def test_the_cmx_rule_needs_a_window_and_a_zero_the_encoding_can_give():
    from rgbx.models.convert import reference_input_encoding

    model, x = _model(), _inputs()
    with pytest.raises(ConfigError, match="needs a window: CMX's eval_crop_size"):
        predict_logits(model, x, scales=(0.75, 1.0), scale_rule="cmx")
    encoding, _ = reference_input_encoding("cmx", ["rgb", "thermal"])  # grey thermal repeated, 3 different means
    thermal = rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "thermal"], num_classes=3,
                                head_channels=16, input_encoding=encoding).eval()
    with pytest.raises(ConfigError, match="input encoding of 'thermal' cannot give"):
        predict_logits(thermal, {"rgb": torch.randn(1, 3, 20, 24), "thermal": torch.randn(1, 1, 20, 24)},
                       window=SlidingWindow((24, 32)), scale_rule="cmx")


def test_a_window_may_be_given_as_its_size():
    """``window=(H, W)`` or one number, as the README's ``rgbx.evaluate(..., window=(240, 320))``: the same logits as
    the SlidingWindow (it failed deep inside: "'tuple' object has no attribute 'size'"); other values are refused by
    name."""
    from rgbx.engine.inference import as_sliding_window
    from rgbx.engine.predict import Predictor

    model, inputs = _model(), _inputs()
    with torch.no_grad():
        ref = predict_logits(model, inputs, window=SlidingWindow((16, 24)))
        assert torch.equal(predict_logits(model, inputs, window=(16, 24)), ref)
        assert torch.equal(predict_logits(model, inputs, window=[16, 24], scale_rule="cmx"),
                           predict_logits(model, inputs, window=SlidingWindow((16, 24)), scale_rule="cmx"))
    assert as_sliding_window(16) == SlidingWindow((16, 16)) and as_sliding_window(None) is None
    for bad in ("16x24", (16, 24, 3), 1.5, (16.0, 24.0), True):
        with pytest.raises(ConfigError, match="expected \\(H, W\\) in pixels"):
            as_sliding_window(bad)
    assert Predictor(model, {}, window=(16, 24)).window == SlidingWindow((16, 24))
