"""``model.input_encoding``: a converted released model sees, from the same files, what its own code fed it.

The references' preprocessing is written out here from their code (DFormer ``utils/transforms.normalize`` and
``dataloader.ValPre``; CMX ``dataloader/RGBXDataset`` + ``normalize``): read with OpenCV (blue first, a grey X image
merged to three channels), / 255, minus the mean, over the std."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rgbx.data.datasets.mfnet  # noqa: F401  (registers "mfnet")
import rgbx.data.datasets.nyu  # noqa: F401  (registers "nyudepthv2")
from rgbx.data.datasets.mfnet import MFNet
from rgbx.data.datasets.nyu import NYUDepthV2
from rgbx.data.sample import normalize_sample
from rgbx.engine.checkpoint import load_model, save_model
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality
from rgbx.models import create_model
from rgbx.models.convert import reference_input_encoding
from rgbx.models.input_encoding import InputEncoding, describe_input_encoding
from tests.data.datasets.test_driving import make_mcubes
from tests.data.datasets.test_rgbd_rgbt import make_mfnet_original, make_nyu_dformer

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def reference_normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """DFormer / CMX ``normalize``: (H, W, C) uint8 → float64 (img / 255 − mean) / std, then C, H, W."""
    return ((img.astype(np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)


def encoded_sample(dataset, index: int, layout: str) -> tuple[dict, dict]:
    """The sample as rgbx's pipeline normalises it, and as the model's input encoding maps it."""
    sample = normalize_sample(dataset.load(index))
    encoding, _ = reference_input_encoding(layout, list(sample["inputs"]))
    inputs = {m: x[None] for m, x in sample["inputs"].items()}
    return inputs, InputEncoding(encoding, list(inputs))(inputs)


def test_dformer_inputs_from_the_nyu_release_files(tmp_path):
    from PIL import Image

    root = make_nyu_dformer(tmp_path / "NYUDepthv2")
    _, encoded = encoded_sample(NYUDepthV2(root, "train"), 0, "dformer")
    rgb = np.asarray(Image.open(root / "RGB" / "0.jpg").convert("RGB"))
    depth = np.asarray(Image.open(root / "Depth" / "0.png").convert("L"))  # cv2.IMREAD_GRAYSCALE of grey RGBA
    bgr = rgb[..., ::-1]  # cv2.imread
    expected_rgb = reference_normalize(bgr, IMAGENET_MEAN, IMAGENET_STD)
    expected_depth = reference_normalize(np.dstack([depth] * 3), [0.48] * 3, [0.28] * 3)[:1]  # DFormer: channel 0
    assert torch.allclose(encoded["rgb"][0].double(), torch.from_numpy(expected_rgb), atol=2e-6)
    assert torch.allclose(encoded["depth"][0].double(), torch.from_numpy(expected_depth), atol=2e-6)
    assert float(expected_depth.max() - expected_depth.min()) > 3  # the fake depth ramps over the whole 8 bits


def test_cmx_inputs_from_the_mfnet_release_files(tmp_path):
    from PIL import Image

    root = make_mfnet_original(tmp_path / "MFNet")
    _, encoded = encoded_sample(MFNet(root, "train"), 0, "cmx")
    rgbt = np.asarray(Image.open(root / "images" / "00001D.png"))
    bgr, thermal = rgbt[..., 2::-1], rgbt[..., 3]
    expected_rgb = reference_normalize(bgr, IMAGENET_MEAN, IMAGENET_STD)
    expected_thermal = reference_normalize(np.dstack([thermal] * 3), IMAGENET_MEAN, IMAGENET_STD)  # cv2.merge
    assert encoded["thermal"].shape == (1, 3, *thermal.shape)
    assert torch.allclose(encoded["rgb"][0].double(), torch.from_numpy(expected_rgb), atol=2e-6)
    assert torch.allclose(encoded["thermal"][0].double(), torch.from_numpy(expected_thermal), atol=2e-6)


def test_cmnext_inputs_from_the_mcubes_release_files(tmp_path):
    """DELIVER's semseg/datasets/mcubes.py, written out: RGB / 255 with ImageNet's statistics, AoLP stacked
    [sin, cos, sin], DoLP and NIR (/ 255) repeated to three channels, nothing else; 192 columns dropped."""
    from PIL import Image

    from rgbx.data.datasets.mcubes import MCubeSDataset

    root = make_mcubes(tmp_path / "multimodal_dataset")
    inputs, encoded = encoded_sample(MCubeSDataset(root, "train"), 0, "cmnext")
    name = (root / "list_folder" / "train.txt").read_text().split()[0]
    rgb = np.asarray(Image.open(root / "polL_color" / f"{name}.png").convert("RGB"))[:, 192:]
    sin, cos = (np.load(root / folder / f"{name}.npy")[:, 192:] for folder in ("polL_aolp_sin", "polL_aolp_cos"))
    dolp = np.load(root / "polL_dolp" / f"{name}.npy")[:, 192:]
    nir = np.asarray(Image.open(root / "NIR_warped" / f"{name}.png"))[:, 192:]
    expected = {"rgb": reference_normalize(rgb, IMAGENET_MEAN, IMAGENET_STD), "aolp": np.stack([sin, cos, sin]),
                "dolp": dolp[None], "nir": nir[None] / (65535.0 if nir.dtype == np.uint16 else 255.0)}
    assert encoded["aolp"].shape[1] == 3 and inputs["aolp"].shape[1] == 2
    for m, want in expected.items():
        assert torch.allclose(encoded[m][0].double(), torch.from_numpy(want.astype(np.float64)), atol=2e-6), m
    assert not torch.allclose(inputs["aolp"], encoded["aolp"][:, :2])  # rgbx normalises AoLP otherwise


FIRST_CONVS = {
    "dformer": {"rgb": "encoder.encoder.downsample_layers.0.0", "depth": "encoder.encoder.downsample_layers_e.0.0"},
    "cmx": {"rgb": "encoder.branches.rgb.stages.0.patch_embed.proj",
            "thermal": "encoder.branches.thermal.stages.0.patch_embed.proj"},
}
CONFIGS = {
    "dformer": dict(backbone="dformer_nano", fusion="dformer", head="ham", modalities=["rgb", "depth"], num_classes=5,
                    head_channels=32),
    "cmx": dict(backbone="mit_nano", fusion="cmx", modalities=["rgb", "thermal"], num_classes=5, head_channels=32),
}


def first_layer_inputs(model, names: dict, inputs: dict, present=None) -> dict:
    """What each first convolution receives (its zero padding is applied inside it, to exactly this tensor)."""
    seen, hooks = {}, []
    modules = dict(model.named_modules())
    for m, name in names.items():
        hooks.append(modules[name].register_forward_pre_hook(lambda mod, args, m=m: seen.setdefault(m, args[0])))
    try:
        with torch.no_grad():
            model(inputs, present)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("layout", ["dformer", "cmx"])
def test_the_first_layers_receive_the_reference_input(layout):
    config = CONFIGS[layout]
    encoding, _ = reference_input_encoding(layout, config["modalities"])
    torch.manual_seed(0)
    model = create_model(**config, input_encoding=encoding).eval()
    plain = create_model(**config).eval()
    assert set(model.state_dict()) == set(plain.state_dict())  # nothing saved: it follows from the config
    supplementary = config["modalities"][1]
    phys_rgb = torch.rand(2, 3, 32, 48)
    phys_x = torch.rand(2, 1, 32, 48)
    spec = {m: get_modality(m) for m in config["modalities"]}
    inputs = {"rgb": spec["rgb"].normalize(phys_rgb), supplementary: spec[supplementary].normalize(phys_x)}
    seen = first_layer_inputs(model, FIRST_CONVS[layout], inputs)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    bgr = phys_rgb.double().flip(1)
    assert torch.allclose(seen["rgb"].double(), (bgr - mean) / std, atol=2e-6)
    if layout == "dformer":  # depth in metres, as rgbx reads DFormer's 8-bit file: 0.5 + 9.5 · v / 255
        v = (phys_x.double() - 0.5) / 9.5
        assert torch.allclose(seen["depth"].double(), (v - 0.48) / 0.28, atol=2e-6)
    else:  # thermal v / 255, merged to three channels
        assert seen["thermal"].shape == (2, 3, 32, 48)
        assert torch.allclose(seen["thermal"].double(), (phys_x.double().expand(-1, 3, -1, -1) - mean) / std, atol=2e-6)
    plain_seen = first_layer_inputs(plain, {"rgb": FIRST_CONVS[layout]["rgb"]}, inputs)
    assert torch.equal(plain_seen["rgb"], inputs["rgb"])  # without an encoding: rgbx's input, unchanged


def test_an_absent_sensor_is_fed_its_fill_value_encoded():
    config = CONFIGS["dformer"]
    encoding, _ = reference_input_encoding("dformer", config["modalities"])
    model = create_model(**config, input_encoding=encoding).eval()
    rgb = torch.randn(2, 3, 32, 48)
    fill = get_modality("depth").fill
    absent = first_layer_inputs(model, FIRST_CONVS["dformer"], {"rgb": rgb})
    given = first_layer_inputs(model, FIRST_CONVS["dformer"], {"rgb": rgb, "depth": torch.full((2, 1, 32, 48), fill)})
    assert torch.allclose(absent["depth"], given["depth"], atol=1e-6)
    metres = fill * 10.0  # rgbx's depth: metres / 10
    assert model.encoder.input_fill["depth"] == pytest.approx(((metres - 5.06) / 2.66,))
    masked = first_layer_inputs(model, FIRST_CONVS["dformer"], {"rgb": rgb, "depth": torch.randn(2, 1, 32, 48)},
                                {"depth": torch.tensor([False, True])})
    assert torch.allclose(masked["depth"][0], given["depth"][0], atol=1e-6)


def test_the_encoding_travels_in_the_model_file_and_changes_the_logits(tmp_path):
    config = CONFIGS["cmx"]
    encoding, _ = reference_input_encoding("cmx", config["modalities"])
    torch.manual_seed(0)
    model = create_model(**config, input_encoding=encoding).eval()
    path = save_model(tmp_path / "m.safetensors", model)
    loaded, _ = load_model(path)
    assert loaded.config.input_encoding == encoding
    inputs = {"rgb": torch.randn(1, 3, 32, 48), "thermal": torch.randn(1, 1, 32, 48)}
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs).logits, model(inputs).logits)
        swapped = dict(inputs, rgb=inputs["rgb"].flip(1))
        assert not torch.allclose(model(swapped).logits, model(inputs).logits)


def test_description_reads_as_the_reference_normalisation():
    encoding, notes = reference_input_encoding("dformer", ["rgb", "depth"])
    assert describe_input_encoding("rgb", encoding["rgb"]) == (
        "rgb: channels [2, 1, 0], (x − [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], x in intensity 0-1")
    assert describe_input_encoding("depth", encoding["depth"]) == "depth: (x − [5.06]) / [2.66], x in m"
    assert any("relative_depth_range (0.5, 10)" in n for n in notes)
    encoding, notes = reference_input_encoding("cmnext", ["rgb", "hha", "event", "lidar"])
    assert encoding == {"hha": {"mean": [0.0] * 3, "std": [1.0] * 3}, "lidar": {"mean": [0.0], "std": [255.0]}}
    assert any("'event'" in n and "event_image sensor" in n for n in notes)
    # the rendered event image (the deliver loader's event_format=image) is already fed as DELIVER feeds it
    encoding, notes = reference_input_encoding("cmnext", ["rgb", "hha", "event_image", "lidar"])
    assert "event_image" not in encoding and not any("event_image" in n for n in notes)
    assert "its hha/ folder" in reference_input_encoding("cmnext", ["rgb", "depth"])[1][0]
    encoding, notes = reference_input_encoding("cmx", ["rgb", "depth"])
    assert list(encoding) == ["rgb"] and "'depth' is not an 8-bit image sensor" in notes[0]
    assert reference_input_encoding("cmx", ["rgb", "hha"])[0]["hha"]["source"] == [2, 1, 0]


@pytest.mark.parametrize("encoding, message", [
    ({"thermal": {"mean": [0.5], "std": [0.2]}}, "model.input_encoding.thermal: 'thermal' is not one of the model's"),
    ({"depth": {"mean": [0.5]}}, "model.input_encoding.depth: std required"),
    ({"depth": {"mean": [0.5], "std": [0.0]}}, "model.input_encoding.depth.std must be positive"),
    ({"depth": {"mean": [0.5, 1.0], "std": [1.0]}}, "model.input_encoding.depth.mean has 2 values for 1 network"),
    ({"depth": {"source": [1], "mean": [0.5], "std": [1.0]}}, "model.input_encoding.depth.source: 'depth' has 1 "
                                                               "channel (0 … 0), got [1]"),
    ({"depth": {"mean": [0.5], "std": [1.0], "scale": 2}}, "model.input_encoding.depth: unknown key scale"),
    ({"depth": {"mean": "0.5", "std": [1.0]}}, "model.input_encoding.depth.mean must be a non-empty list"),
    ({"depth": {"source": [0.5], "mean": [0.5], "std": [1.0]}}, "model.input_encoding.depth.source must hold integers"),
])
def test_a_wrong_encoding_is_a_config_error_naming_the_key(encoding, message):
    with pytest.raises(ConfigError) as info:
        create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                     input_encoding=encoding)
    assert message in str(info.value)


def test_dformer_refuses_an_encoding_that_drops_its_rgb_channels():
    with pytest.raises(ConfigError, match="the dformer fusion reads 3 RGB channels"):
        create_model(**CONFIGS["dformer"], input_encoding={"rgb": {"source": [0], "mean": [0.5], "std": [0.2]}})


def test_a_fusion_without_an_input_encoding_argument_is_told_so(monkeypatch):
    """A fusion registered outside rgbx that predates input encodings still builds without one, and with one gets a
    ConfigError instead of a TypeError from its constructor."""
    from rgbx.models.fusions.mean import MeanFusion
    from rgbx.models.registries import FUSIONS

    def legacy(backbone, modalities, drop_path_rate=0.1, attn_impl="sdpa"):
        return MeanFusion(backbone=backbone, modalities=modalities, drop_path_rate=drop_path_rate,
                          attn_impl=attn_impl)

    monkeypatch.setitem(FUSIONS._items, "legacy_mean", legacy)
    create_model(backbone="mit_nano", fusion="legacy_mean", modalities=["rgb", "depth"], num_classes=3)
    with pytest.raises(ConfigError, match="the fusion 'legacy_mean' does not take an input encoding"):
        create_model(backbone="mit_nano", fusion="legacy_mean", modalities=["rgb", "depth"], num_classes=3,
                     input_encoding={"depth": {"mean": [1.0], "std": [2.0]}})


def test_the_zero_input_is_what_the_encoding_maps_to_zero():
    """CMX pads after normalising: the rgbx input the network sees as 0, per sensor channel; none for a grey sensor
    repeated to channels with different means; 0 without an encoding."""
    encoding, _ = reference_input_encoding("cmx", ["rgb", "hha", "thermal"])
    enc = InputEncoding(encoding, ["rgb", "hha", "thermal", "depth"])
    for name in ("rgb", "hha"):
        zero = torch.tensor(enc.zero(name)).view(1, -1, 1, 1).expand(1, -1, 2, 2)
        assert enc({name: zero})[name].abs().max() < 1e-6
        assert torch.tensor(enc.zero(name)).abs().max() > 0.1  # not rgbx's own 0 (blue first: red and blue swap)
    assert enc.zero("thermal") is None
    assert enc.zero("depth") == (0.0,)
