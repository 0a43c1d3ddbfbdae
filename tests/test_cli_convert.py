"""``rgbx convert`` end to end: a torch.save'd checkpoint in a released layout → an rgbx weights file."""

from __future__ import annotations

import argparse

import pytest
import torch

from rgbx.cli import convert as convert_cli
from rgbx.engine.checkpoint import load_model, read_model_info
from rgbx.errors import CheckpointError, ConfigError
from rgbx.models import create_model
from rgbx.models.convert import convert_checkpoint
from tests.models.test_convert import random_state


def run_convert(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rgbx")
    sub = parser.add_subparsers(dest="command", required=True)
    convert_cli.add_parser(sub)
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.run(args)


def test_cmx_checkpoint_round_trip(tmp_path, capsys):
    state = random_state("cmx_mit_b0")
    # as CMX's engine saves it: the model under "model", with optimizer state beside it
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 500},
               tmp_path / "cmx.pth")
    out = tmp_path / "out" / "cmx_b0.safetensors"
    assert run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out) == 0
    text = capsys.readouterr().out
    assert "layout cmx (detected)" in text and "backbone mit_b0" in text and "num_classes 40" in text
    assert "parameters filled: 12,126,896 of 12,126,896 (100.0%)" in text
    assert "unwrapped the checkpoint's 'model' entry" in text and f"wrote {out}" in text

    model, info = load_model(out)
    assert info["converted_from"] == {"file": "cmx.pth", "layout": "cmx"}
    config = model.config
    assert (config.backbone, config.fusion, config.head, config.modalities, config.num_classes,
            config.head_channels) == ("mit_b0", "cmx", "mlp", ["rgb", "depth"], 40, 512)
    expected = create_model(config)
    convert_checkpoint(state, expected)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.state_dict().items())
    assert torch.equal(loaded["encoder.fuse.1.cross.cross_attn.kv.depth.weight"],
                       state["backbone.FFMs.1.cross.cross_attn.kv2.weight"])


def test_explicit_flags_and_wrong_model_is_one_error_listing_shapes(tmp_path):
    state = random_state("cmx_mit_b0")
    torch.save(state, tmp_path / "cmx.pth")
    with pytest.raises(CheckpointError) as info:
        run_convert(tmp_path / "cmx.pth", "--backbone", "mit_b0", "--modalities", "rgb", "depth", "--head-channels",
                    "256", "--out", tmp_path / "x.safetensors")
    message = str(info.value)
    assert "head.linear.0.weight ← decode_head.linear_c1.proj.weight: model expects (256, 32), checkpoint gives " \
           "(512, 32)" in message
    assert not (tmp_path / "x.safetensors").exists()


def test_segformer_encoder_into_cmx_needs_num_classes(tmp_path, capsys):
    torch.save(random_state("segformer_b0_hf_imagenet"), tmp_path / "mit.bin")
    with pytest.raises(ConfigError, match="--num-classes is required"):
        run_convert(tmp_path / "mit.bin", "--out", tmp_path / "x.safetensors")
    out = tmp_path / "mit_cmx.safetensors"
    run_convert(tmp_path / "mit.bin", "--layout", "segformer-hf", "--fusion", "cmx", "--modalities", "rgb", "thermal",
                "--num-classes", "9", "--branches", "rgb", "--out", out)
    text = capsys.readouterr().out
    assert "kept at initialisation" in text and "backbone mit_b0" in text
    assert read_model_info(out)["model"]["modalities"] == ["rgb", "thermal"]


def test_dformer_checkpoint_gets_the_reference_head_eps(tmp_path, capsys):
    torch.save({"state_dict": random_state("dformer_t")}, tmp_path / "dformer.pth")
    out = tmp_path / "dformer.safetensors"
    run_convert(tmp_path / "dformer.pth", "--modalities", "rgb", "depth", "--out", out)
    assert "head_options {'bn_eps': 0.001}" in capsys.readouterr().out
    model, _ = load_model(out)
    assert model.config.head_options == {"bn_eps": 1e-3} and model.config.backbone == "dformer_t"
    assert {m.eps for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_unreadable_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read it as weights"):
        run_convert(tmp_path / "bad.pth", "--num-classes", "3", "--out", tmp_path / "x.safetensors")


def test_class_names_given_at_conversion_travel_with_the_file_and_guide_init_from(tmp_path, capsys):
    from rgbx.models.transfer import transfer_weights

    state = random_state("cmx_mit_b0")
    torch.save(state, tmp_path / "cmx.pth")
    names = [f"class{i}" for i in range(38)] + ["wall", "floor"]
    out = tmp_path / "cmx_b0.safetensors"
    with pytest.raises(ConfigError, match="--classes names 2 classes; the model has 40"):
        run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out, "--classes", "wall", "floor")
    assert not out.exists()
    assert run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out, "--classes", *names) == 0
    assert read_model_info(out)["dataset"] == {"classes": names}

    mine = create_model(backbone="mit_b0", fusion="cmx", modalities=["rgb", "depth"], num_classes=3, head_channels=512)
    report = transfer_weights(mine, out, classes=["floor", "robot", "wall"])
    converted = load_model(out)[0].state_dict()
    assert torch.equal(mine.state_dict()["head.classifier.weight"][0], converted["head.classifier.weight"][39])
    assert torch.equal(mine.state_dict()["head.classifier.weight"][2], converted["head.classifier.weight"][38])
    assert "2 of 3 classes from the file's rows of the same name (floor, wall)" in report.summary()
    assert not report.fresh


def test_class_names_of_a_benchmark(tmp_path):
    from rgbx.data import DATASETS
    from rgbx.data.datasets.nyu import NYU_CLASSES

    state = random_state("cmx_mit_b0")  # a 40-class decode head, as CMX's NYU checkpoints
    torch.save(state, tmp_path / "cmx.pth")
    out = tmp_path / "nyu.safetensors"
    assert run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out,
                       "--classes-of", "nyudepthv2") == 0
    assert read_model_info(out)["dataset"] == {"classes": list(NYU_CLASSES)}
    with pytest.raises(ConfigError, match="dataset 'mfnet' has 9 classes; the model has 40"):
        run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out, "--classes-of", "mfnet")
    with pytest.raises(ConfigError, match="give one"):
        run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out, "--classes-of", "mfnet",
                    "--classes", "a")
    with pytest.raises(ConfigError, match="unknown dataset 'nyu'"):
        run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "depth", "--out", out, "--classes-of", "nyu")
    # every benchmark's list, without any file; the folder format has none
    for name in ("nyudepthv2", "sunrgbd", "mfnet", "pst900", "deliver", "mcubes", "muses", "kitti360", "camvid"):
        dataset = DATASETS.get(name)
        assert dataset.class_names(len(dataset.CLASSES)) == dataset.CLASSES and len(dataset.CLASSES) > 1
    assert DATASETS.get("eventscape").class_names(12)[-1] == "TrafficSign"  # CARLA <= 0.9.9: tags 1..12
    assert len(DATASETS.get("eventscape").class_names(22)) == 22
    with pytest.raises(ConfigError, match="no fixed class list"):
        DATASETS.get("folder").class_names(3)


def test_cmx_rgbt_checkpoint_keeps_its_three_channel_x_conv_under_the_reference_encoding(tmp_path, capsys):
    """MFNet's CMX feeds thermal merged to 3 channels, each normalised with ImageNet's statistics: the converted
    model keeps the 3-channel first conv as released and maps rgbx's 1-channel thermal to that input."""
    state = random_state("cmx_mit_b0")
    torch.save(state, tmp_path / "cmx.pth")
    out = tmp_path / "cmx_rgbt.safetensors"
    run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "thermal", "--out", out)
    text = capsys.readouterr().out
    assert "input encoding (what the checkpoint's code fed its network" in text
    assert "rgb: channels [2, 1, 0], (x − [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]" in text
    assert "thermal: channels [0, 0, 0], (x − [0.485, 0.456, 0.406])" in text
    model, _ = load_model(out)
    assert model.config.input_encoding["thermal"]["source"] == [0, 0, 0]
    released = state["backbone.extra_patch_embed1.proj.weight"]
    assert released.shape[1] == 3
    assert torch.equal(model.state_dict()["encoder.branches.thermal.stages.0.patch_embed.proj.weight"], released)
    assert model({"rgb": torch.randn(1, 3, 64, 64), "thermal": torch.randn(1, 1, 64, 64)}).logits.shape == (1, 40,
                                                                                                         64, 64)
    # --input-encoding rgbx: rgbx's own normalisation, the X conv summed onto the one thermal channel
    plain = tmp_path / "cmx_rgbt_plain.safetensors"
    run_convert(tmp_path / "cmx.pth", "--modalities", "rgb", "thermal", "--input-encoding", "rgbx", "--out", plain)
    assert "input encoding" not in capsys.readouterr().out
    model, _ = load_model(plain)
    assert model.config.input_encoding == {}
    assert torch.equal(model.state_dict()["encoder.branches.thermal.stages.0.patch_embed.proj.weight"],
                       released.sum(dim=1, keepdim=True))


def test_dformer_checkpoint_gets_dformers_rgb_order_and_depth_scale(tmp_path, capsys):
    torch.save({"state_dict": random_state("dformer_t")}, tmp_path / "dformer.pth")
    out = tmp_path / "dformer.safetensors"
    run_convert(tmp_path / "dformer.pth", "--modalities", "rgb", "depth", "--out", out)
    text = capsys.readouterr().out
    assert "depth: (x − [5.06]) / [2.66], x in m" in text and "relative_depth_range (0.5, 10)" in text
    assert "to score it as the dformer code does" in text and "--miou all" in text
    model, _ = load_model(out)
    assert model.config.input_encoding == {
        "rgb": {"source": [2, 1, 0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "depth": {"mean": [5.06], "std": [2.66]}}


def test_cmnext_mcubes_checkpoint_gets_the_polarisation_as_deliver_feeds_it(tmp_path, capsys):
    """DELIVER's MCubeS code feeds AoLP as [sin, cos, sin] and DoLP / NIR repeated, all without normalisation: the
    AoLP branch keeps its released three-channel conv and is fed rgbx's (sin, cos) through that channel map; the
    printed evaluation is DELIVER's (test.txt, the central 1024×1024, every class counted)."""
    state = random_state("cmnext_b2_rgbdel")  # three supplementary sensors, as MCubeS's aolp, dolp, nir
    torch.save(state, tmp_path / "cmnext.pth")
    out = tmp_path / "cmnext_mcubes.safetensors"
    assert run_convert(tmp_path / "cmnext.pth", "--modalities", "rgb", "aolp", "dolp", "nir", "--out", out) == 0
    text = capsys.readouterr().out
    assert "aolp: channels [0, 1, 0]" in text
    assert "--dataset mcubes --split test --miou all --option center_crop=1024" in text
    assert f"rgbx eval {out} --data DIR --as-published" in text  # the protocol names the loader
    model, info = load_model(out)
    assert info["reference_evaluation"]["flags"] == "--dataset mcubes --split test --miou all --option center_crop=1024"
    from rgbx.cli.main import main as rgbx_main

    assert rgbx_main(["info", str(out)]) == 0  # the protocol travels in the file
    assert "scored as its authors' code does (DELIVER's MCubeS" in capsys.readouterr().out
    assert model.config.input_encoding["aolp"] == {"source": [0, 1, 0], "mean": [0.0] * 3, "std": [1.0] * 3}
    released = state["backbone.extra_downsample_layers.0.proj.module.weight"]
    assert torch.equal(model.state_dict()["encoder.supplementary.0.embed.proj.weight"], released)
    inputs = {"rgb": torch.randn(1, 3, 64, 64), "aolp": torch.randn(1, 2, 64, 64), "dolp": torch.rand(1, 1, 64, 64),
              "nir": torch.rand(1, 1, 64, 64)}
    assert model(inputs).logits.shape == (1, 25, 64, 64)


DELIVER_EVAL = "--dataset deliver --split val --miou all --option event_format=image --option resize=1024"


CMX_EVAL = "--split test  [--scales 0.75 1 1.25 --flip --scale-rule cmx --window 480x640]"


@pytest.mark.parametrize("modalities,classes,flags,loader", [
    (["rgb", "hha", "event_image", "lidar"], 25, DELIVER_EVAL, None),  # DeLiVER
    (["rgb", "hha"], 25, DELIVER_EVAL, None),  # DeLiVER, RGB-D
    (["rgb", "aolp", "dolp", "nir"], 20, "--dataset mcubes --split test --miou all --option center_crop=1024", None),
    (["rgb", "thermal"], 9, "--dataset mfnet --split test --miou all", "mfnet"),  # MFNet: each image at its own size
    (["rgb", "hha"], 40, "--dataset nyudepthv2 --split test --miou all", "nyudepthv2"),  # NYU Depth V2
])
def test_the_printed_evaluation_follows_the_benchmark_of_a_cmnext_file(modalities, classes, flags, loader):
    from rgbx.models.convert import reference_evaluation

    assert reference_evaluation("cmnext", modalities, classes)[1] == flags
    # CMX's protocol is the same on every benchmark; NYU Depth V2's and MFNet's name their loader
    assert reference_evaluation("cmx", modalities, classes)[1] == (f"--dataset {loader} " if loader else "") + CMX_EVAL


def test_the_layout_flag_offers_every_registered_layout():
    import argparse

    from rgbx.cli.main import build_parser
    from rgbx.models.convert import LAYOUTS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    layout = next(a for a in sub.choices["convert"]._actions if a.dest == "layout")
    assert tuple(layout.choices) == ("auto", *LAYOUTS)
