import math

import pytest
import torch

from rgbx.errors import ConfigError
from rgbx.models import BACKBONES
from rgbx.models.backbones.mit import MixTransformer, checkpoint_filter_fn

PUBLISHED = {
    # name: (embed dims, depths, encoder parameters in millions from the SegFormer paper, Table 1/2)
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), 3.3),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), 13.1),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), 24.2),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3), 44.0),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3), 60.8),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3), 81.4),
}


def build_meta(name, **kwargs) -> MixTransformer:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return BACKBONES.get(name)(**kwargs)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config(name):
    dims, depths, millions = PUBLISHED[name]
    model = build_meta(name)
    assert model.arch.embed_dims == dims
    assert model.arch.depths == depths
    assert model.arch.num_heads == (1, 2, 5, 8)
    assert model.arch.sr_ratios == (8, 4, 2, 1)
    assert model.arch.mlp_ratio == 4
    assert model.arch.patch_sizes == (7, 3, 3, 3)
    assert model.arch.strides == (4, 2, 2, 2)
    assert [len(stage.blocks) for stage in model.stages] == list(depths)
    assert model.channels() == list(dims)
    assert model.feature_info.reductions() == [4, 8, 16, 32]
    params = sum(p.numel() for p in model.parameters())
    assert math.isclose(params / 1e6, millions, rel_tol=0.02), params
    # stochastic depth: linear from 0 to the default 0.1 over all blocks; the first block's layer is a DropPath of
    # rate 0 too, the same module type as its stage's others (one compiled graph for the stage), and without
    # stochastic depth every block has an identity
    last = model.stages[-1].blocks[-1].drop_path
    assert last.drop_prob == pytest.approx(0.1)
    first = model.stages[0].blocks[0].drop_path
    assert type(first) is type(last) and first.drop_prob == 0.0
    plain = MixTransformer(model.arch, drop_path_rate=0.0)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for stage in plain.stages for b in stage.blocks)


def test_nano_is_small_and_documented():
    model = BACKBONES.get("mit_nano")()
    assert model.channels() == [16, 32, 64, 128]
    assert [len(s.blocks) for s in model.stages] == [1, 1, 1, 1]
    assert "not a published" in BACKBONES.get("mit_nano").__doc__.lower()


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (37, 53), (16, 16), (5, 9)])
def test_any_input_size(size):
    model = BACKBONES.get("mit_nano")(in_channels=1).eval()
    x = torch.randn(2, 1, *size)
    feats = model(x)
    assert len(feats) == 4
    h, w = size
    for f, c, r in zip(feats, model.channels(), model.feature_info.reductions(), strict=True):
        assert f.shape == (2, c, math.ceil(h / r), math.ceil(w / r))
        assert torch.isfinite(f).all()


def test_stage_by_stage_equals_forward():
    torch.manual_seed(0)
    model = BACKBONES.get("mit_nano")().eval()
    x = torch.randn(2, 3, 48, 80)
    full = model(x)
    y = x
    for i in range(model.num_stages):
        y = model.forward_stage(i, y)
        torch.testing.assert_close(y, full[i])
    # a separate stem replaces the first patch embedding
    stem = model.make_stem(3)
    stem.load_state_dict(model.stages[0].patch_embed.state_dict())
    torch.testing.assert_close(model.forward_stage(0, x, stem=stem), full[0])


def test_without_stem_needs_one():
    model = BACKBONES.get("mit_nano")(in_channels=None)
    assert model.stages[0].patch_embed is None
    with pytest.raises(RuntimeError, match="stem"):
        model(torch.randn(1, 3, 32, 32))
    out = model.forward_stage(0, torch.randn(1, 2, 32, 32), stem=model.make_stem(2))
    assert out.shape == (1, 16, 8, 8)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_sdpa_and_eager_agree(size):
    torch.manual_seed(0)
    sdpa = BACKBONES.get("mit_nano")(attn_impl="sdpa").eval()
    eager = BACKBONES.get("mit_nano")(attn_impl="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for a, b in zip(sdpa(x), eager(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        before = sdpa(x)
        sdpa.set_attn_impl("eager")
        for a, b in zip(before, sdpa(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unknown_attn_impl():
    with pytest.raises(ConfigError, match="flash"):
        BACKBONES.get("mit_nano")(attn_impl="flash")


def test_every_parameter_gets_a_gradient():
    model = BACKBONES.get("mit_nano")(in_channels=2)
    sum(f.mean() for f in model(torch.randn(2, 2, 64, 64))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_checkpoint_filter_fn_maps_original_names():
    model = BACKBONES.get("mit_nano")()
    ours = model.state_dict()

    def to_original(key):
        _, stage, part, rest = key.split(".", 3)
        name = {"patch_embed": "patch_embed", "blocks": "block", "norm": "norm"}[part]
        return f"{name}{int(stage) + 1}.{rest}"

    original = {to_original(k): v for k, v in ours.items()}
    assert "block1.0.attn.q.weight" in original and "patch_embed1.proj.weight" in original
    original["head.weight"] = torch.zeros(1000, 128)
    converted = checkpoint_filter_fn(original)
    assert set(converted) == set(ours)
    model.load_state_dict(converted, strict=True)
