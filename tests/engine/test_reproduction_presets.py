"""The presets that train a published model on its benchmark with the paper's settings (docs/reproducing.md): each
trains on a tree in its dataset's official layout, and builds the published model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rgbx.cli.evaluate import published_flags
from rgbx.engine.checkpoint import read_model_info
from rgbx.engine.config import load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from rgbx.errors import ConfigError
from rgbx.models import create_model
from rgbx.models.convert import REFERENCE_EVALUATION
from tests.data.datasets import test_driving as driving
from tests.data.datasets import test_rgbd_rgbt as rgbd


def make_sunrgbd(root):
    """SUN RGB-D in the DFormer release layout (lowercase labels/, 37 classes, 16-bit depth)."""
    for n in ("a", "b", "c"):
        rgbd.save(root / "RGB" / f"{n}.jpg", rgbd.rgb_image())
        rgbd.save(root / "Depth" / f"{n}.png", np.full((rgbd.H, rgbd.W), 2000, np.uint16))
        rgbd.save(root / "labels" / f"{n}.png", rgbd.label_image([0, 1, 37, 5]))
    (root / "train.txt").write_text("RGB/a.jpg\nRGB/b.jpg\n")
    (root / "test.txt").write_text("RGB/c.jpg\n")
    return root


# preset → (its benchmark's tree, the tiny backbone of the same family the training test swaps in)
PRESETS = {
    "nyu_cmx_b2": (rgbd.make_nyu_sagate, "mit_nano"),  # the CMX / SA-Gate release: HHA/ beside RGB/
    "nyu_dformer_l": (rgbd.make_nyu_dformer, "dformer_nano"),
    "sunrgbd_dformer_l": (make_sunrgbd, "dformer_nano"),
    "nyu_dformerv2_l": (rgbd.make_nyu_dformer, "dformerv2_nano"),
    "sunrgbd_dformerv2_l": (make_sunrgbd, "dformerv2_nano"),
    "deliver_cmnext_b2": (driving.make_deliver, "mit_nano"),
    "mcubes_cmnext_b2": (driving.make_mcubes, "mit_nano"),
    "mfnet_cmnext_b4": (rgbd.make_mfnet_original, "mit_nano"),
    "nyu_cmnext_b4": (rgbd.make_nyu_sagate, "mit_nano"),  # DELIVER's nyu.py reads CMX's RGB/, HHA/, Label/
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_reproduction_preset_trains_on_its_benchmark_layout(tmp_path, preset):
    """The preset's dataset, modalities, fusion, head, loss and schedule, as they are; only the backbone (a tiny one
    of the same family), the crop, the batch and the length are made small."""
    make_tree, tiny_backbone = PRESETS[preset]
    root = make_tree(tmp_path / "data")
    cfg = load_config(preset, [f"data.root={root}", f"output_dir={tmp_path / 'run'}", f"model.backbone={tiny_backbone}",
                               "model.head_channels=32", "data.crop_size=[32,32]", "data.num_workers=0",
                               "train.batch_size=2", "train.eval_batch_size=1", "train.iters=2", "train.eval_every=0",
                               "train.checkpoint_every=0"])
    trainer = Trainer(cfg, reporter=Reporter(quiet=True))
    assert trainer.train_set.transform.pad_centre == (cfg.data.crop_padding == "centre")
    metrics = trainer.fit()
    full = "+".join(cfg.model.modalities)
    assert 0.0 <= metrics["subsets"][full]["all"]["miou"] <= 1.0
    # the authors' evaluation protocol is recorded in the model file, for rgbx eval --as-published; it scores the
    # split the preset validates on
    info = read_model_info(tmp_path / "run" / "model.safetensors")
    what, flags = REFERENCE_EVALUATION[cfg.published_evaluation]
    assert info["reference_evaluation"] == {"what": what, "flags": flags}
    typed = published_flags(flags, multi_scale=False)
    assert typed[typed.index("--split") + 1] == cfg.data.val_split
    if "--dataset" in typed:  # a protocol that names its loader names the preset's
        assert typed[typed.index("--dataset") + 1] == cfg.data.dataset


def test_a_preset_run_is_scored_as_published_from_its_model_file(tmp_path, capsys):
    """rgbx train with a preset ends with the command that scores the run as the authors' code does, and that
    command applies the recorded protocol (CMX: the test split, one scale; multi-scale: CMX's MS & Flip rule)."""
    import json

    from rgbx.cli.main import main

    root = rgbd.make_nyu_sagate(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "nyu_cmx_b2", f"data.root={root}", f"output_dir={run}", "model.backbone=mit_nano",
                 "model.head_channels=32", "data.crop_size=[32,32]", "data.num_workers=0", "train.batch_size=2",
                 "train.eval_batch_size=1", "train.iters=2", "train.eval_every=0",
                 "train.checkpoint_every=0"]) == 0
    hint = f"rgbx eval {run / 'model.safetensors'} --data {root} --dataset nyudepthv2 --as-published [multi-scale]"
    assert hint in capsys.readouterr().out
    report = tmp_path / "eval.json"
    assert main(["eval", str(run / "model.safetensors"), "--data", str(root), "--dataset", "nyudepthv2",
                 "--as-published", "multi-scale", "--window", "480x640", "--json", str(report)]) == 0
    scored = json.loads(report.read_text())
    assert scored["split"] == "test" and scored["test_time"]["scale_rule"] == "cmx"
    assert scored["test_time"]["scales"] == [0.75, 1.0, 1.25] and scored["test_time"]["flip"]
    # a protocol without a multi-scale test (MFNet, CMNeXt's val_mm.py): the command offers none
    root = rgbd.make_mfnet_original(tmp_path / "mfnet")
    run = tmp_path / "mfnet_run"
    assert main(["train", "mfnet_cmnext_b4", f"data.root={root}", f"output_dir={run}", "model.backbone=mit_nano",
                 "model.head_channels=32", "data.crop_size=[32,32]", "data.num_workers=0", "train.batch_size=2",
                 "train.eval_batch_size=1", "train.iters=1", "train.eval_every=0", "train.checkpoint_every=0"]) == 0
    out = capsys.readouterr().out
    assert "--dataset mfnet --as-published\n" in out and "[multi-scale]" not in out


@pytest.mark.parametrize("preset,classes,params", [
    ("nyu_cmx_b2", 40, 66.6e6),  # CMX MiT-B2, as counted from the reference code (the speed issue's anchors)
    ("nyu_dformer_l", 40, 39.0e6),  # DFormer-L + LightHam head, likewise
    ("nyu_dformerv2_l", 40, 95_550_074),  # DFormerv2_L + LightHamHead(1024, ham 512): benchmarks/parity_dformerv2.py
    ("mcubes_cmnext_b2", 20, 58.73e6),  # CMNeXt('CMNeXt-B2', 20, [image, aolp, dolp, nir]) counted on DELIVER's code
    ("mfnet_cmnext_b4", 9, 116.56e6),  # CMNeXt('CMNeXt-B4', 9, [img, thermal]), likewise
    ("nyu_cmnext_b4", 40, 116.58e6),  # CMNeXt('CMNeXt-B4', 40, [img, depth]): 116,576,299
])
def test_a_reproduction_preset_builds_the_published_model(preset, classes, params):
    cfg = load_config(preset, [])
    model = create_model(dataclasses.replace(cfg.model, num_classes=classes))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=2e-3)


@pytest.mark.parametrize("preset", ["nyu_dformer_l", "sunrgbd_dformer_l"])
def test_the_dformer_presets_keep_what_dformers_optimiser_never_updates(preset):
    """DFormer's group_weight leaves the blocks' layer scales and their channels-first LayerNorms out of the
    optimiser: 236 tensors, 48,096 values of DFormer-L (counted on the reference code). The presets' patterns
    freeze exactly as many, and nothing else."""
    from rgbx.engine.optim import freeze_parameters

    cfg = load_config(preset, [])
    model = create_model(dataclasses.replace(cfg.model, num_classes=40))
    assert freeze_parameters(model, list(cfg.train.freeze)) == 48096
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 236
    assert all(".layer_scale_" in n or ".norm" in n for n in frozen)


def test_the_deliver_preset_trains_like_the_deliver_code():
    """What the DeLiVER code's configs/deliver_rgbdel.yaml and semseg/ code set, as the preset states it."""
    cfg = load_config("deliver_cmnext_b2", [])
    assert cfg.method.loss == "ohem" and cfg.method.ohem_thresh == 0.7 and cfg.method.ohem_min_kept == 1 / 16
    # its "depth" is read from hha/, its events fed as the rendered images
    assert cfg.model.modalities == ["rgb", "hha", "event_image", "lidar"]
    assert cfg.data.options == {"event_format": "image"}
    assert (cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.poly_power, cfg.optim.poly_from) == (
        6e-5, 0.1, 0.9, "warmup_end")
    assert cfg.train.iters == 200 * (3983 // 8) and cfg.optim.warmup_iters == 10 * (3983 // 8)
    # RandomResizedCrop((1024, 1024), scale (0.5, 2)) scales a 1042×1042 image by ratio × 1024 / 1042
    assert cfg.data.scale_range == [pytest.approx(0.5 * 1024 / 1042, abs=1e-4), pytest.approx(2 * 1024 / 1042,
                                                                                            abs=1e-4)]
    # augmentations_mm.Normalize: every sensor but RGB as its 8-bit image / 255
    from rgbx.models.convert import reference_input_encoding

    assert cfg.model.input_encoding == reference_input_encoding("cmnext", cfg.model.modalities)[0]
    assert cfg.data.photometric_ops == {"rgb": DELIVER_PHOTOMETRIC, "hha": [], "event_image": [], "lidar": []}


# augmentations_mm.get_train_augmentation: RandomColorJitter(p=0.2) (brightness, contrast, saturation 0.5-1.5 each)
# and RandomGaussianBlur((3, 3), p=0.2) (torchvision's sigma for 3 taps: 0.8), RGB only
DELIVER_PHOTOMETRIC = [
    {"name": "color_jitter", "p": 0.2, "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.0},
    {"name": "gaussian_blur", "p": 0.2, "sigma": [0.8, 0.8], "kernel_size": 3, "padding": "reflect"}]


def test_a_photometric_setting_for_a_sensor_the_run_does_not_load_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data.photometric_ops names \['thermal'\], which this run does not load"):
        Trainer(load_config("deliver_cmnext_b2", [f"output_dir={tmp_path}", "data.photometric_ops.thermal=[]"]),
                reporter=Reporter(quiet=True))


@pytest.mark.parametrize("preset,modalities,train_images,batch,crop,scale_range,loss", [
    # configs/mcubes_rgbadn.yaml: MCubeSNet's pipeline (semseg/datasets/mcubes.py: shorter side 256-1024, crop 512)
    ("mcubes_cmnext_b2", ["rgb", "aolp", "dolp", "nir"], 302, 16, [512, 512], [0.25, 1.0], "ohem"),
    # configs/mfnet_rgbt.yaml: RandomResizedCrop((480, 640), scale (0.5, 2)) scales a 480×640 image by the ratio
    ("mfnet_cmnext_b4", ["rgb", "thermal"], 784, 16, [480, 640], [0.5, 2.0], "ce"),
    # configs/nyu_rgbd.yaml: as MFNet; its "depth" is the HHA/ folder (semseg/datasets/nyu.py)
    ("nyu_cmnext_b4", ["rgb", "hha"], 795, 16, [480, 640], [0.5, 2.0], "ce"),
])
def test_the_cmnext_presets_train_like_the_deliver_code(preset, modalities, train_images, batch, crop, scale_range,
                                                       loss):
    """DELIVER's configs: 4 GPUs × 4 images, 500 epochs of len(train) // 4 // 4 iterations, 10 warm-up epochs from
    0.1 × lr, poly 0.9 from the warm-up's end, AdamW 6e-5; every sensor fed as DELIVER's code feeds it."""
    from rgbx.models.convert import reference_input_encoding

    cfg = load_config(preset, [])
    per_epoch = train_images // 4 // 4
    assert cfg.model.modalities == modalities and cfg.method.loss == loss
    assert (cfg.train.batch_size, cfg.train.iters, cfg.optim.warmup_iters) == (batch, 500 * per_epoch, 10 * per_epoch)
    assert (cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.poly_power, cfg.optim.poly_from) == (
        6e-5, 0.1, 0.9, "warmup_end")
    assert (cfg.data.crop_size, cfg.data.scale_range, cfg.data.val_split) == (crop, scale_range, "test")
    assert cfg.model.input_encoding == reference_input_encoding("cmnext", modalities)[0]
    deliver_ops = {"rgb": DELIVER_PHOTOMETRIC, modalities[1]: []}
    # semseg/datasets/mcubes.py: RandomGaussianBlur of RGB and NIR, p 0.5, sigma uniform in [0, 1)
    mcubes_blur = [{"name": "gaussian_blur", "p": 0.5, "sigma": [0.0, 1.0]}]
    mcubes_ops = {"rgb": mcubes_blur, "nir": mcubes_blur, "aolp": [], "dolp": []}
    assert cfg.data.photometric_ops == (mcubes_ops if preset.startswith("mcubes") else deliver_ops)


@pytest.mark.parametrize("preset", ["nyu_dformerv2_l", "sunrgbd_dformerv2_l"])
def test_the_dformerv2_presets_keep_what_dformers_optimiser_never_updates(preset):
    """The same group_weight trains DFormerv2: each block's geometry-prior mixing weights (Geo.weight, a bare
    parameter) and the layer scales of stages 3-4 (gamma_1 / gamma_2) are in no group: 111 tensors, 32,730 values of
    DFormerv2-L, counted on the reference code. The presets freeze exactly those."""
    from rgbx.engine.optim import freeze_parameters

    cfg = load_config(preset, [])
    model = create_model(dataclasses.replace(cfg.model, num_classes=40))
    assert freeze_parameters(model, list(cfg.train.freeze)) == 32730
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 111
    assert all(n.endswith(".Geo.weight") or ".gamma_" in n for n in frozen)


@pytest.mark.parametrize("preset", ["nyu_dformer_l", "sunrgbd_dformer_l", "nyu_dformerv2_l", "sunrgbd_dformerv2_l"])
def test_the_dformer_presets_feed_depth_as_dformer_does(preset):
    """DFormer's (v / 255 − 0.48) / 0.28 of its 8-bit depth file: what rgbx convert stores for DFormer's depth."""
    from rgbx.models.convert import reference_input_encoding

    cfg = load_config(preset, [])
    assert cfg.model.input_encoding == {"depth": reference_input_encoding("dformer", ["rgb", "depth"])[0]["depth"]}


def test_training_a_benchmark_from_random_weights_is_pointed_out(tmp_path):
    printed = []

    class Recorder(Reporter):
        def print(self, *args, **kw):
            printed.append(" ".join(str(a) for a in args))

    root = rgbd.make_nyu_sagate(tmp_path / "data")
    overrides = [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.head_channels=32", "data.num_workers=0",
                 "train.batch_size=2"]
    Trainer(load_config("nyu_cmx_b2", [*overrides, "model.backbone=mit_b0"]), reporter=Recorder(quiet=True))
    assert any("model.pretrained is not set, so the mit_b0 encoder starts from random weights" in line
               for line in printed)


@pytest.mark.parametrize("preset,fill", [
    ("nyu_cmx_b2", {"rgb": [0.485, 0.456, 0.406], "hha": [0.485, 0.456, 0.406]}),
    ("nyu_dformer_l", {"rgb": [0.485, 0.456, 0.406], "depth": [5.06]}),  # DFormer's depth mean, in metres
    ("sunrgbd_dformer_l", {"rgb": [0.485, 0.456, 0.406], "depth": [5.06]}),
    ("nyu_dformerv2_l", {"rgb": [0.485, 0.456, 0.406], "depth": [5.06]}),
    ("sunrgbd_dformerv2_l", {"rgb": [0.485, 0.456, 0.406], "depth": [5.06]}),
])
def test_the_cmx_and_dformer_presets_pad_crops_as_their_code(preset, fill):
    """CMX and DFormer pad a crop larger than the scaled image after normalising, with 0: centred, at the network's
    zero input. The presets do (data.crop_padding=centre); the fill is each sensor's value that the network sees as 0."""
    from rgbx.engine.trainer import network_zero_fill

    cfg = load_config(preset, [])
    assert cfg.data.crop_padding == "centre"
    got = network_zero_fill(cfg.model.input_encoding, cfg.model.modalities)
    assert got.keys() == fill.keys()
    for name, values in fill.items():
        assert got[name] == pytest.approx(values, abs=1e-6), name


def test_centred_padding_needs_a_zero_the_input_encoding_can_give():
    from rgbx.engine.trainer import network_zero_fill
    from rgbx.models.convert import reference_input_encoding

    encoding, _ = reference_input_encoding("cmx", ["rgb", "thermal"])  # grey thermal fed to 3 channels, 3 means
    with pytest.raises(ConfigError, match="data.crop_padding=centre pads 'thermal'"):
        network_zero_fill(encoding, ["rgb", "thermal"])
    assert network_zero_fill({}, ["thermal"]) == {"thermal": [0.5]}  # without an encoding: rgbx's mean
