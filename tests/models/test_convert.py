"""``rgbx.models.convert``: released checkpoint layouts → rgbx models.

The fixtures under ``fixtures/`` are the key names, shapes and dtypes of the real reference models (instantiated
from their code by ``fixtures/generate_fixtures.py``; no weights). Each test fills such a layout with random
tensors, converts it and checks where every tensor landed.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch

from rgbx.errors import CheckpointError
from rgbx.models import create_model
from rgbx.models.convert import (
    LAYOUTS,
    convert_checkpoint,
    detect_layout,
    infer_model_options,
    read_checkpoint,
    unwrap_state_dict,
)

FIXTURES = Path(__file__).parent / "fixtures"


@cache
def layout_of(name: str) -> dict[str, tuple[list[int], str]]:
    return {k: tuple(v) for k, v in json.loads((FIXTURES / f"{name}.json").read_text())["tensors"].items()}


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in the fixture's layout (every tensor distinct, so a misplaced tensor is caught)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in layout_of(name).items():
        if dtype == "float32":
            out[key] = torch.randn(shape, generator=gen)
        else:
            out[key] = torch.randint(0, 100, shape, generator=gen, dtype=getattr(torch, dtype))
    return out


def cmx_b0(**overrides):
    config = dict(backbone="mit_b0", fusion="cmx", head="mlp", modalities=["rgb", "depth"], num_classes=40,
                  head_channels=512)
    torch.manual_seed(0)
    return create_model(**(config | overrides))


def clone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "fixture, layout",
    [
        ("cmx_mit_b0", "cmx"),
        ("cmnext_b2_rgbdel", "cmnext"),
        ("dformer_t", "dformer"),
        ("segformer_b0_nvlabs_imagenet", "segformer-nvlabs"),
        ("segformer_b0_nvlabs_ade", "segformer-nvlabs"),
        ("segformer_b0_mmseg_ade", "segformer-mmseg"),
        ("segformer_b0_hf_ade", "segformer-hf"),
        ("segformer_b0_hf_imagenet", "segformer-hf"),
        ("segformer_b0_hf5_ade", "segformer-hf"),
    ],
)
def test_layout_detected_from_the_key_names(fixture, layout):
    assert detect_layout(layout_of(fixture)) == layout


def test_unknown_layout_is_a_clear_error():
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint's layout") as info:
        detect_layout(["conv1.weight", "fc.weight"])
    for name in LAYOUTS:
        assert name in str(info.value)
    with pytest.raises(CheckpointError, match="unknown layout 'cmx2'"):
        convert_checkpoint({"a": torch.zeros(1)}, cmx_b0(backbone="mit_nano"), layout="cmx2")


# CMX: the rename rules, written independently of the implementation.
_CMX_RULES = [
    (r"^backbone\.patch_embed(\d)\.(.+)$", lambda m: f"encoder.branches.rgb.stages.{int(m[1]) - 1}.patch_embed.{m[2]}"),
    (r"^backbone\.extra_patch_embed(\d)\.(.+)$",
     lambda m: f"encoder.branches.depth.stages.{int(m[1]) - 1}.patch_embed.{m[2]}"),
    (r"^backbone\.block(\d)\.(.+)$", lambda m: f"encoder.branches.rgb.stages.{int(m[1]) - 1}.blocks.{m[2]}"),
    (r"^backbone\.extra_block(\d)\.(.+)$", lambda m: f"encoder.branches.depth.stages.{int(m[1]) - 1}.blocks.{m[2]}"),
    (r"^backbone\.norm(\d)\.(.+)$", lambda m: f"encoder.branches.rgb.stages.{int(m[1]) - 1}.norm.{m[2]}"),
    (r"^backbone\.extra_norm(\d)\.(.+)$", lambda m: f"encoder.branches.depth.stages.{int(m[1]) - 1}.norm.{m[2]}"),
    (r"^backbone\.FRMs\.(.+)$", lambda m: f"encoder.rectify.{m[1]}"),
    (r"^backbone\.FFMs\.(\d)\.channel_emb\.(.+)$", lambda m: f"encoder.fuse.{m[1]}.channel_emb.{m[2]}"),
    (r"^backbone\.FFMs\.(\d)\.cross\.(channel_proj|end_proj|norm)([12])\.(.+)$",
     lambda m: f"encoder.fuse.{m[1]}.cross.{m[2]}.{['rgb', 'depth'][int(m[3]) - 1]}.{m[4]}"),
    (r"^backbone\.FFMs\.(\d)\.cross\.cross_attn\.kv([12])\.(.+)$",
     lambda m: f"encoder.fuse.{m[1]}.cross.cross_attn.kv.{['rgb', 'depth'][int(m[2]) - 1]}.{m[3]}"),
    (r"^decode_head\.linear_c(\d)\.proj\.(.+)$", lambda m: f"head.linear.{int(m[1]) - 1}.{m[2]}"),
    (r"^decode_head\.linear_fuse\.0\.weight$", lambda m: "head.fuse.0.weight"),
    (r"^decode_head\.linear_fuse\.1\.(.+)$", lambda m: f"head.fuse.1.{m[1]}"),
    (r"^decode_head\.linear_pred\.(.+)$", lambda m: f"head.classifier.{m[1]}"),
]


def _cmx_target(key: str) -> str | None:
    for pattern, target in _CMX_RULES:
        match = re.match(pattern, key)
        if match:
            return target(match)
    return None


def test_cmx_every_tensor_lands_at_its_rgbx_name():
    state = random_state("cmx_mit_b0")
    model = cmx_b0()
    report = convert_checkpoint(state, model, layout="cmx")
    own = model.state_dict()
    filled = set()
    for key, value in state.items():
        target = _cmx_target(key)
        if key == "decode_head.linear_fuse.0.bias":
            continue
        assert target is not None, key
        if target == "encoder.branches.depth.stages.0.patch_embed.proj.weight":
            expected = value.sum(dim=1, keepdim=True)  # 3-channel X conv → 1-channel depth
        elif target == "head.fuse.1.running_mean":
            expected = value - state["decode_head.linear_fuse.0.bias"]  # the conv bias folded into BN
        else:
            expected = value
        assert torch.equal(own[target], expected.to(own[target].dtype)), (key, target)
        filled.add(target)
    assert filled == set(own)  # every rgbx tensor comes from the checkpoint
    assert report.parameters_filled == report.parameters_total == sum(p.numel() for p in model.parameters())
    assert report.tensors_mapped == len(own) and not report.kept and not report.dropped
    assert report.mapping["head.fuse.1.running_mean"] == ("decode_head.linear_fuse.1.running_mean",
                                                         "decode_head.linear_fuse.0.bias")
    assert any("summed over its input channels" in n for n in report.notes)
    assert any("folded" in n for n in report.notes)


def test_cmx_second_modality_takes_the_x_path_and_adapts_its_channels():
    state = random_state("cmx_mit_b0")
    model = cmx_b0(modalities=["rgb", "hha"])  # a 3-channel X: no adaptation
    convert_checkpoint(state, model)
    assert torch.equal(model.encoder.branches["hha"].stages[0].patch_embed.proj.weight,
                       state["backbone.extra_patch_embed1.proj.weight"])
    assert torch.equal(model.encoder.fuse[1].cross.end_proj["hha"].weight,
                       state["backbone.FFMs.1.cross.end_proj2.weight"])


def test_cmx_model_mismatches_are_clear_errors():
    state = random_state("cmx_mit_b0")
    nano = dict(backbone="mit_nano", head_channels=16)  # these are refused before any tensor is compared
    with pytest.raises(CheckpointError, match="list 'rgb' first"):
        convert_checkpoint(state, cmx_b0(modalities=["depth", "rgb"], **nano))
    with pytest.raises(CheckpointError, match="fusion 'cmx'"):
        convert_checkpoint(state, cmx_b0(fusion="mean", **nano))
    with pytest.raises(CheckpointError, match="two paths"):
        convert_checkpoint(state, cmx_b0(modalities=["rgb", "depth", "thermal"], **nano))
    with pytest.raises(CheckpointError, match="--head mlp"):
        convert_checkpoint(state, cmx_b0(head="fcn", **nano))


def test_removed_extra_and_misshaped_keys_are_all_listed_in_one_error():
    state = random_state("cmx_mit_b0")
    del state["backbone.block2.1.attn.kv.weight"]
    state["backbone.block2.9.attn.kv.weight"] = torch.zeros(3)
    state["backbone.FRMs.0.spatial_weights.mlp.0.bias"] = torch.zeros(7)
    model = cmx_b0()
    before = clone_state(model)
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(state, model, layout="cmx", name="ckpt.pth")
    message = str(info.value)
    assert message.startswith("ckpt.pth: the cmx checkpoint does not fit this model")
    assert "missing (model tensors the checkpoint does not fill): 1" in message
    assert "encoder.branches.rgb.stages.1.blocks.1.attn.kv.weight (128, 64)" in message
    assert ("encoder.branches.rgb.stages.1.blocks.9.attn.kv.weight ← backbone.block2.9.attn.kv.weight (3)"
            in message)  # unexpected: the model has no block 9
    assert ("encoder.rectify.0.spatial_weights.mlp.0.bias ← backbone.FRMs.0.spatial_weights.mlp.0.bias: model "
            "expects (32), checkpoint gives (7)") in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched on error


def test_unused_checkpoint_tensors_are_errors_unless_ignored():
    state = random_state("cmx_mit_b0")
    state["aux_head.conv.weight"] = torch.zeros(4, 4)
    with pytest.raises(CheckpointError, match=r"unused \(checkpoint tensors that map to nothing\): 1\n"
                                              r"\s+aux_head\.conv\.weight \(4, 4\)"):
        convert_checkpoint(state, cmx_b0())
    report = convert_checkpoint(state, cmx_b0(), ignore=["aux_head."])
    assert report.dropped == {"aux_head.conv.weight": "ignored on request"}


def test_cmx_without_its_decode_head_keeps_the_head_at_initialisation():
    state = random_state("cmx_mit_b0")
    model = cmx_b0()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = convert_checkpoint(state, model, ignore=["decode_head."])
    assert all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert report.kept and all(k.startswith("head.") for k in report.kept)


def test_unwrapping_and_module_prefix():
    state = random_state("segformer_b0_nvlabs_imagenet")
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"state": {}}, "epoch": 3}
    unwrapped, notes = unwrap_state_dict(wrapped)
    assert set(unwrapped) == set(state) and len(notes) == 2
    assert unwrap_state_dict({"state_dict": state, "meta": {}})[0].keys() == state.keys()
    with pytest.raises(CheckpointError, match="not a state dict"):
        unwrap_state_dict({"epoch": 1, "optimizer": {}})


class Payload:
    """An arbitrary class: torch.load(weights_only=True) refuses to unpickle it."""


def test_read_checkpoint_is_weights_only(tmp_path):
    state = random_state("segformer_b0_nvlabs_imagenet")
    torch.save({"state_dict": state, "meta": {"env": "x"}}, tmp_path / "ok.pth")
    read, _ = read_checkpoint(tmp_path / "ok.pth")
    assert all(torch.equal(read[k], state[k]) for k in state)
    torch.save({"state_dict": state, "payload": Payload()}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="never pickled code"):
        read_checkpoint(tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_segformer_nvlabs_imagenet_into_every_cmx_branch():
    state = random_state("segformer_b0_nvlabs_imagenet")
    model = cmx_b0()
    fusion_before = {k: v.clone() for k, v in model.encoder.fuse.state_dict().items()}
    report = convert_checkpoint(state, model)
    assert report.layout == "segformer-nvlabs"
    for m in ("rgb", "depth"):
        branch = model.encoder.branches[m]
        assert torch.equal(branch.stages[2].blocks[1].attn.kv.weight, state["block3.1.attn.kv.weight"])
        assert torch.equal(branch.stages[3].norm.bias, state["norm4.bias"])
        assert torch.equal(branch.stages[1].patch_embed.norm.weight, state["patch_embed2.norm.weight"])
    assert torch.equal(model.encoder.branches["rgb"].stages[0].patch_embed.proj.weight, state["patch_embed1.proj.weight"])
    assert torch.equal(model.encoder.branches["depth"].stages[0].patch_embed.proj.weight,
                       state["patch_embed1.proj.weight"].sum(1, keepdim=True))
    assert report.dropped == {"head.weight": "ImageNet classifier", "head.bias": "ImageNet classifier"}
    assert all(torch.equal(v, fusion_before[k]) for k, v in model.encoder.fuse.state_dict().items())
    assert {".".join(k.split(".")[:2]) for k in report.kept} == {
        "encoder.rectify", "encoder.fuse", "head.linear", "head.fuse", "head.classifier"}
    encoder_params = sum(p.numel() for p in model.encoder.branches.parameters())
    assert report.parameters_filled == encoder_params


def test_segformer_branches_option_fills_only_the_chosen_branch():
    state = random_state("segformer_b0_nvlabs_imagenet")
    model = cmx_b0()
    depth_before = {k: v.clone() for k, v in model.encoder.branches["depth"].state_dict().items()}
    convert_checkpoint(state, model, branches=["rgb"])
    assert all(torch.equal(v, depth_before[k]) for k, v in model.encoder.branches["depth"].state_dict().items())
    assert torch.equal(model.encoder.branches["rgb"].stages[0].blocks[0].mlp.fc1.weight,
                       state["block1.0.mlp.fc1.weight"])
    with pytest.raises(CheckpointError, match=r"branches \['lidar'\] are not modalities"):
        convert_checkpoint(state, cmx_b0(backbone="mit_nano"), branches=["lidar"])


def test_segformer_nvlabs_segmentation_checkpoint_into_mean_fusion_with_head():
    state = random_state("segformer_b0_nvlabs_ade")
    model = create_model(backbone="mit_b0", fusion="mean", head="mlp", modalities=["rgb", "depth"],
                         num_classes=150, head_channels=256)
    report = convert_checkpoint(state, model)
    enc = model.encoder
    assert torch.equal(enc.stems["rgb"].proj.weight, state["backbone.patch_embed1.proj.weight"])
    assert torch.equal(enc.stems["depth"].proj.weight, state["backbone.patch_embed1.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(enc.stems["depth"].norm.bias, state["backbone.patch_embed1.norm.bias"])
    assert torch.equal(enc.backbone.stages[1].blocks[0].attn.sr.weight, state["backbone.block2.0.attn.sr.weight"])
    head = model.head
    assert torch.equal(head.linear[0].weight, state["decode_head.linear_c1.proj.weight"])
    assert torch.equal(head.linear[3].bias, state["decode_head.linear_c4.proj.bias"])
    assert torch.equal(head.fuse[0].weight, state["decode_head.linear_fuse.conv.weight"])
    assert torch.equal(head.fuse[1].running_var, state["decode_head.linear_fuse.bn.running_var"])
    assert torch.equal(head.classifier.weight, state["decode_head.linear_pred.weight"])
    assert set(report.dropped) == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    assert report.parameters_filled == report.parameters_total and not report.kept


def test_segformer_mmseg_splits_packed_qkv_and_reshapes_1x1_convs():
    state = random_state("segformer_b0_mmseg_ade")
    model = cmx_b0()
    report = convert_checkpoint(state, model, ignore=["decode_head."])
    assert report.layout == "segformer-mmseg"
    block = model.encoder.branches["depth"].stages[2].blocks[1]
    packed_w = state["backbone.layers.2.1.1.attn.attn.in_proj_weight"]  # (3·160, 160): q, k, v
    packed_b = state["backbone.layers.2.1.1.attn.attn.in_proj_bias"]
    assert torch.equal(block.attn.q.weight, packed_w[:160]) and torch.equal(block.attn.q.bias, packed_b[:160])
    assert torch.equal(block.attn.kv.weight, packed_w[160:]) and torch.equal(block.attn.kv.bias, packed_b[160:])
    assert torch.equal(block.attn.proj.weight, state["backbone.layers.2.1.1.attn.attn.out_proj.weight"])
    assert torch.equal(block.mlp.fc1.weight, state["backbone.layers.2.1.1.ffn.layers.0.weight"][:, :, 0, 0])
    assert torch.equal(block.mlp.fc2.weight, state["backbone.layers.2.1.1.ffn.layers.4.weight"][:, :, 0, 0])
    assert torch.equal(block.mlp.dwconv.dwconv.weight, state["backbone.layers.2.1.1.ffn.layers.1.weight"])
    stage = model.encoder.branches["rgb"].stages[3]
    assert torch.equal(stage.norm.weight, state["backbone.layers.3.2.weight"])
    assert torch.equal(stage.patch_embed.proj.weight, state["backbone.layers.3.0.projection.weight"])
    assert torch.equal(stage.patch_embed.norm.bias, state["backbone.layers.3.0.norm.bias"])
    assert torch.equal(model.encoder.branches["rgb"].stages[0].blocks[0].attn.norm.weight,
                       state["backbone.layers.0.1.0.attn.norm.weight"])
    # mmseg's SegformerHead (a ConvModule per stage) has no rgbx counterpart: left unused it is an error
    with pytest.raises(CheckpointError, match=r"unused .*: 27\n\s+decode_head\.convs\.0\.conv\.weight \(256, 32, 1, 1\)"):
        convert_checkpoint(state, cmx_b0())


@pytest.mark.parametrize("fixture, v5", [("segformer_b0_hf_ade", False), ("segformer_b0_hf5_ade", True)])
def test_segformer_hf_concatenates_key_value_and_maps_the_decode_head(fixture, v5):
    state = random_state(fixture)
    model = create_model(backbone="mit_b0", fusion="mean", head="mlp", modalities=["rgb"], num_classes=150,
                         head_channels=256)
    report = convert_checkpoint(state, model)
    assert report.layout == "segformer-hf"
    if v5:
        blk = "segformer.stages.1.blocks.1."
        q, k, v, o = (f"{blk}attention.{n}_proj" for n in "qkvo")
        sr, sr_norm = f"{blk}attention.sequence_reduction.sequence_reduction", f"{blk}attention.sequence_reduction.layer_norm"
        norm1, fc1 = f"{blk}layernorm_before", f"{blk}mlp.fc1"
        embed, stage_norm, linear = "segformer.stages.0.patch_embeddings", "segformer.stages.3.layer_norm", "linear_projections"
    else:
        blk = "segformer.encoder.block.1.1."
        q, k, v, o = (f"{blk}attention.{n}" for n in ("self.query", "self.key", "self.value", "output.dense"))
        sr, sr_norm = f"{blk}attention.self.sr", f"{blk}attention.self.layer_norm"
        norm1, fc1 = f"{blk}layer_norm_1", f"{blk}mlp.dense1"
        embed, stage_norm, linear = "segformer.encoder.patch_embeddings.0", "segformer.encoder.layer_norm.3", "linear_c"
    block = model.encoder.backbone.stages[1].blocks[1]
    assert torch.equal(block.attn.q.weight, state[f"{q}.weight"])
    assert torch.equal(block.attn.kv.weight, torch.cat([state[f"{k}.weight"], state[f"{v}.weight"]]))
    assert torch.equal(block.attn.kv.bias, torch.cat([state[f"{k}.bias"], state[f"{v}.bias"]]))
    assert report.mapping["encoder.backbone.stages.1.blocks.1.attn.kv.weight"] == (f"{k}.weight", f"{v}.weight")
    assert torch.equal(block.attn.proj.weight, state[f"{o}.weight"])
    assert torch.equal(block.attn.sr.bias, state[f"{sr}.bias"])
    assert torch.equal(block.attn.norm.weight, state[f"{sr_norm}.weight"])
    assert torch.equal(block.norm1.weight, state[f"{norm1}.weight"])
    assert torch.equal(block.mlp.fc1.weight, state[f"{fc1}.weight"])
    assert torch.equal(model.encoder.stems["rgb"].proj.weight, state[f"{embed}.proj.weight"])
    assert torch.equal(model.encoder.stems["rgb"].norm.weight, state[f"{embed}.layer_norm.weight"])
    assert torch.equal(model.encoder.backbone.stages[3].norm.bias, state[f"{stage_norm}.bias"])
    assert torch.equal(model.head.linear[2].weight, state[f"decode_head.{linear}.2.proj.weight"])
    assert torch.equal(model.head.fuse[0].weight, state["decode_head.linear_fuse.weight"])
    assert torch.equal(model.head.fuse[1].running_mean, state["decode_head.batch_norm.running_mean"])
    assert torch.equal(model.head.classifier.bias, state["decode_head.classifier.bias"])
    assert report.parameters_filled == report.parameters_total


def test_segformer_hf_imagenet_into_a_ktb_model_fills_backbone_and_stems():
    state = random_state("segformer_b0_hf_imagenet")
    model = create_model(backbone="mit_b0", fusion="ktb", modalities=["rgb", "depth"], num_classes=5)
    report = convert_checkpoint(state, model)
    assert torch.equal(model.encoder.backbone.stages[0].patch_embed.proj.weight,
                       state["segformer.encoder.patch_embeddings.0.proj.weight"])
    assert set(report.dropped) == {"classifier.weight", "classifier.bias"}
    assert not any(k.startswith("encoder.backbone.") for k in report.kept)


def test_segformer_into_a_model_without_mit_is_an_error():
    state = random_state("segformer_b0_nvlabs_imagenet")
    model = create_model(backbone="dformer_nano", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=3)
    with pytest.raises(CheckpointError, match="needs a model with a MiT backbone"):
        convert_checkpoint(state, model)


def test_segformer_into_a_bare_mit_backbone():
    from rgbx.models.backbones.mit import mit_b0

    state = random_state("segformer_b0_nvlabs_imagenet")
    encoder = mit_b0()
    convert_checkpoint(state, encoder)
    assert torch.equal(encoder.stages[0].patch_embed.proj.weight, state["patch_embed1.proj.weight"])


# CMNeXt (DELIVER): the B2 RGB-D-E-L model. Spot checks of the rename rules, written independently of
# rgbx.models.fusions.cmnext.cmnext_key_map; the checkpoint's per-modality modules 0, 1, 2 = depth, event, lidar.
_CMNEXT_MODALITIES = ["rgb", "depth", "event", "lidar"]
_CMNEXT_SPOTS = {
    "backbone.patch_embed1.proj.weight": "encoder.backbone.stages.0.patch_embed.proj.weight",
    "backbone.block3.5.attn.kv.weight": "encoder.backbone.stages.2.blocks.5.attn.kv.weight",
    "backbone.norm4.bias": "encoder.backbone.stages.3.norm.bias",
    "backbone.extra_downsample_layers.0.proj.module.weight": "encoder.supplementary.0.embed.proj.weight",
    "backbone.extra_downsample_layers.2.norm.ln_0.bias": "encoder.supplementary.2.embed.norms.depth.bias",
    "backbone.extra_downsample_layers.1.norm.ln_1.weight": "encoder.supplementary.1.embed.norms.event.weight",
    "backbone.extra_score_predictor.3.score_nets.2.1.weight": "encoder.supplementary.3.hub.score.lidar.1.weight",
    "backbone.extra_block3.4.mlp.dwconv.dwconv.weight": "encoder.supplementary.2.blocks.4.mlp.dwconv.weight",
    "backbone.extra_block1.2.layer_scale_2": "encoder.supplementary.0.blocks.2.layer_scale_2",
    "backbone.extra_norm2.weight": "encoder.supplementary.1.norm.weight",
    "backbone.FRMs.2.spatial_weights.mlp.0.weight": "encoder.rectify.2.spatial_weights.mlp.0.weight",
    "backbone.FFMs.1.cross.end_proj2.weight": "encoder.fuse.1.cross.end_proj.x.weight",
    "backbone.FFMs.1.cross.cross_attn.kv1.weight": "encoder.fuse.1.cross.cross_attn.kv.rgb.weight",
    "backbone.FFMs.0.channel_emb.norm.running_var": "encoder.fuse.0.channel_emb.norm.running_var",
    "decode_head.linear_c3.proj.weight": "head.linear.2.weight",
    "decode_head.linear_fuse.conv.weight": "head.fuse.0.weight",
    "decode_head.linear_fuse.bn.running_mean": "head.fuse.1.running_mean",
    "decode_head.linear_pred.bias": "head.classifier.bias",
}


@pytest.fixture(scope="module")
def cmnext_b2():
    """The rgbx CMNeXt-B2 RGB-D-E-L model (built once: each test converts into it, which overwrites every tensor)."""
    torch.manual_seed(0)
    return create_model(backbone="mit_b2", fusion="cmnext", head="mlp", modalities=_CMNEXT_MODALITIES,
                        num_classes=25, head_channels=512)


@pytest.fixture(scope="module")
def cmnext_state():
    return random_state("cmnext_b2_rgbdel")


def test_cmnext_every_tensor_lands_at_its_rgbx_name(cmnext_b2, cmnext_state):
    report = convert_checkpoint(cmnext_state, cmnext_b2)
    assert report.layout == "cmnext"
    own = cmnext_b2.state_dict()
    assert set(report.mapping) == set(own)  # nothing missing
    assert len(report.mapping) == len(cmnext_state) and not report.dropped and not report.kept  # nothing unused
    assert report.parameters_filled == report.parameters_total == sum(p.numel() for p in cmnext_b2.parameters())
    for target, (source,) in report.mapping.items():  # every tensor copied unchanged (RGB is 3-channel)
        assert torch.equal(own[target], cmnext_state[source].to(own[target].dtype)), (source, target)
    for source, target in _CMNEXT_SPOTS.items():
        assert report.mapping[target] == (source,)
        assert torch.equal(own[target], cmnext_state[source]), source
    # the shared 3-input-channel stem is kept as it is (rgbx folds it onto each modality's channels at run time)
    assert cmnext_b2.encoder.supplementary[0].embed.proj.weight.shape == (64, 3, 7, 7)
    assert any("'img' → rgb, 0 → depth, 1 → event, 2 → lidar" in n for n in report.notes)


def test_cmnext_modality_order_option(cmnext_b2, cmnext_state):
    report = convert_checkpoint(cmnext_state, cmnext_b2, modality_order=["rgb", "lidar", "depth", "event"])
    enc = cmnext_b2.encoder
    assert torch.equal(enc.supplementary[1].embed.norms["lidar"].weight,
                       cmnext_state["backbone.extra_downsample_layers.1.norm.ln_0.weight"])
    assert torch.equal(enc.supplementary[3].hub.score["event"][0].weight,
                       cmnext_state["backbone.extra_score_predictor.3.score_nets.2.0.weight"])
    assert any("'img' → rgb, 0 → lidar, 1 → depth, 2 → event" in n for n in report.notes)
    with pytest.raises(CheckpointError, match="must start with the model's primary modality 'rgb'"):
        convert_checkpoint(cmnext_state, cmnext_b2, modality_order=["depth", "rgb", "event", "lidar"])
    with pytest.raises(CheckpointError, match="must list each of the model's modalities"):
        convert_checkpoint(cmnext_state, cmnext_b2, modality_order=["rgb", "depth", "event"])
    with pytest.raises(CheckpointError, match="modality_order is for the cmnext layout"):
        convert_checkpoint(random_state("cmx_mit_b0"), cmx_b0(backbone="mit_nano", head_channels=16),
                           modality_order=["rgb", "depth"])


def test_cmnext_removed_key_is_reported(cmnext_b2, cmnext_state):
    state = dict(cmnext_state)
    del state["backbone.extra_score_predictor.1.score_nets.0.0.weight"]
    state["aux_head.conv.weight"] = torch.zeros(2, 2)
    before = cmnext_b2.encoder.supplementary[1].hub.score["depth"][0].weight.clone()
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(state, cmnext_b2, name="deliver.pth")
    message = str(info.value)
    assert message.startswith("deliver.pth: the cmnext checkpoint does not fit this model")
    assert ("missing (model tensors the checkpoint does not fill): 1\n"
            "    encoder.supplementary.1.hub.score.depth.0.weight (128, 1, 3, 3)") in message
    assert "unused (checkpoint tensors that map to nothing): 1\n    aux_head.conv.weight (2, 2)" in message
    assert torch.equal(cmnext_b2.encoder.supplementary[1].hub.score["depth"][0].weight, before)  # untouched


def test_cmnext_backbone_state_dict_fills_the_encoder_only(cmnext_b2, cmnext_state):
    backbone = {k.removeprefix("backbone."): v for k, v in cmnext_state.items() if k.startswith("backbone.")}
    report = convert_checkpoint(backbone, cmnext_b2)
    assert report.layout == "cmnext"
    assert report.kept and all(k.startswith("head.") for k in report.kept)
    assert torch.equal(cmnext_b2.encoder.supplementary[2].norm.bias, backbone["extra_norm3.bias"])


def test_cmnext_model_mismatches_are_clear_errors(cmnext_state):
    nano = dict(backbone="mit_nano", fusion="cmnext", head="mlp", num_classes=25, head_channels=16)
    with pytest.raises(CheckpointError, match=r"3 supplementary modalities .* the model has 1 \(depth\)"):
        convert_checkpoint(cmnext_state, create_model(modalities=["rgb", "depth"], **nano))
    with pytest.raises(CheckpointError, match="fusion 'cmnext'"):
        convert_checkpoint(cmnext_state, cmx_b0(backbone="mit_nano", head_channels=16))
    with pytest.raises(CheckpointError, match="--head mlp"):
        convert_checkpoint(cmnext_state, create_model(modalities=_CMNEXT_MODALITIES, **(nano | {"head": "fcn"})))
    with pytest.raises(CheckpointError, match="shape mismatch"):  # the right modalities, the wrong MiT variant
        convert_checkpoint(cmnext_state, create_model(modalities=_CMNEXT_MODALITIES, **nano))


def test_cmnext_cli_defaults(cmnext_state):
    import argparse

    from rgbx.cli import convert as convert_cli

    parser = argparse.ArgumentParser(prog="rgbx")
    convert_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "deliver.pth", "--out", "x.safetensors", "--modalities", *_CMNEXT_MODALITIES,
                              "--modality-order", "rgb", "depth", "event", "lidar"])
    assert args.modality_order == _CMNEXT_MODALITIES
    layout = detect_layout(cmnext_state)
    config, _ = convert_cli.model_config(args, infer_model_options(cmnext_state, layout), layout)
    assert (config.fusion, config.backbone, config.head, config.head_channels, config.num_classes,
            config.modalities) == ("cmnext", "mit_b2", "mlp", 512, 25, _CMNEXT_MODALITIES)
    assert "rgb" not in config.input_encoding  # DELIVER reads RGB in rgbx's order and normalisation
    assert config.input_encoding["lidar"] == {"mean": [0.0], "std": [255.0]}  # its LiDAR image / 255


@pytest.fixture(scope="module")
def dformer_state():
    return random_state("dformer_t")


def test_dformer_names_map_one_to_one(dformer_state):
    model = create_model(backbone="dformer_t", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=40, head_channels=512, head_options={"bn_eps": 1e-3})
    report = convert_checkpoint(dformer_state, model)
    own = model.state_dict()
    for key, value in dformer_state.items():
        target = ("encoder.encoder." + key.removeprefix("backbone.") if key.startswith("backbone.")
                  else "head." + key.removeprefix("decode_head."))
        assert torch.equal(own[target], value), key
    assert set(report.mapping) == set(own)
    assert not any("eps" in n for n in report.notes)
    assert {b.eps for b in model.head.modules() if isinstance(b, torch.nn.BatchNorm2d)} == {1e-3}


def test_dformer_head_eps_advice_and_wrong_model(dformer_state):
    model = create_model(backbone="dformer_t", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=40, head_channels=512)
    report = convert_checkpoint(dformer_state, model)
    assert any("bn_eps" in n and "1e-05" in n for n in report.notes)
    with pytest.raises(CheckpointError, match="fusion 'dformer'"):
        convert_checkpoint(dformer_state, cmx_b0())
    wrong_variant = create_model(backbone="dformer_nano", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                                 num_classes=40, head_channels=512)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        convert_checkpoint(dformer_state, wrong_variant)


def test_dformer_imagenet_encoder_without_prefix(dformer_state):
    encoder_only = {k.removeprefix("backbone."): v for k, v in dformer_state.items() if k.startswith("backbone.")}
    encoder_only["head.weight"] = torch.zeros(1000, 256)
    model = create_model(backbone="dformer_t", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=40, head_channels=512)
    report = convert_checkpoint({"state_dict": encoder_only}, model)
    assert report.layout == "dformer" and report.dropped == {"head.weight": "ImageNet classifier"}
    assert report.kept and all(k.startswith("head.") for k in report.kept)


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("cmx_mit_b0", dict(fusion="cmx", head="mlp", backbone="mit_b0", num_classes=40, head_channels=512)),
        ("cmnext_b2_rgbdel", dict(fusion="cmnext", head="mlp", backbone="mit_b2", num_classes=25, head_channels=512)),
        ("dformer_t", dict(fusion="dformer", head="ham", backbone="dformer_t", num_classes=40, head_channels=512,
                           head_options={"bn_eps": 1e-3})),
        ("segformer_b0_nvlabs_imagenet", dict(backbone="mit_b0")),
        ("segformer_b0_nvlabs_ade", dict(backbone="mit_b0", head="mlp", num_classes=150, head_channels=256)),
        ("segformer_b0_mmseg_ade", dict(backbone="mit_b0")),
        ("segformer_b0_hf_ade", dict(backbone="mit_b0", head="mlp", num_classes=150, head_channels=256)),
        ("segformer_b0_hf5_ade", dict(backbone="mit_b0", head="mlp", num_classes=150, head_channels=256)),
    ],
)
def test_model_options_read_off_the_checkpoint(fixture, expected):
    state = {k: torch.empty(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in layout_of(fixture).items()}
    assert infer_model_options(state, detect_layout(state)) == expected


def test_ham_head_bn_eps_option():
    model = create_model(backbone="mit_nano", fusion="mean", head="ham", modalities=["rgb"], num_classes=3,
                         head_channels=16, head_options={"bn_eps": 1e-3})
    bns = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and {b.eps for b in bns} == {1e-3}
    default = create_model(backbone="mit_nano", fusion="mean", head="ham", modalities=["rgb"], num_classes=3,
                           head_channels=16)
    assert {m.eps for m in default.head.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    with pytest.raises(ValueError, match="bn_eps"):
        create_model(backbone="mit_nano", fusion="mean", head="ham", modalities=["rgb"], num_classes=3,
                     head_options={"bn_eps": 0})
