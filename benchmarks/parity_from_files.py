"""From the same files to the same logits: the references' data loading and models against rgbx's loaders and
models converted with ``rgbx convert``.

``parity_cmx.py`` / ``parity_dformer.py`` show that rgbx computes what the reference networks compute from the same
input tensors. This script checks what a user of released weights needs as well: that from a benchmark's files,
rgbx's loader and the converted model's input encoding (``model.input_encoding``) give the network the input the
reference's own data loading gives it. It writes small fake benchmark trees, runs the references' dataset classes and
normalisation on them and the reference model (random weights) on that, converts the reference's state dict with
``rgbx convert`` (once as it does by default, once with ``--input-encoding rgbx``), runs rgbx's loader and the
converted model on the same files, and prints, per case, the largest input and logit differences and the share of
pixels whose predicted class agrees with the reference's.

Cases:

* ``dformer-nyu``: DFormer-T + LightHam head on NYU Depth V2 in DFormer's release layout (``RGB/``, 8-bit ``Depth/``,
  ``Label/``, ``test.txt`` lines ``RGB/<n>.jpg``), read by DFormer's ``utils/dataloader/RGBXDataset.py`` with its
  ``ValPre`` (the test-time preprocessing: blue-first RGB, ImageNet statistics; depth (v / 255 − 0.48) / 0.28).
* ``cmx-nyu``: CMX MiT-B0 on NYU Depth V2 with HHA in CMX's layout (``RGB/``, ``HHA/``, ``Label/``, bare names),
  read by CMX's ``dataloader/RGBXDataset.py`` and normalised as its evaluator's ``process_image_rgbX`` does.
* ``cmx-mfnet``: CMX MiT-B0 on MFNet (RGB-T, 9 classes): the reference reads ``RGB/`` and a one-channel ``Modal/``
  thermal image (``x_is_single_channel``: merged to three channels); rgbx reads the same pixels from the original
  four-channel release (``images/<n>.png``).

* ``cmnext-deliver`` (with ``--deliver``): CMNeXt-B2 on DeLiVER in its release layout (RGB, ``hha/`` as DELIVER's
  "depth", rendered event images, LiDAR images), read by DELIVER's ``semseg/datasets/deliver.DELIVER`` with its
  ``Normalize``; rgbx reads the events as the ``event_image`` sensor (``event_format=image``).
* ``cmnext-mcubes`` (with ``--deliver``): CMNeXt-B2 on MCubeS (RGB, AoLP sin / cos arrays, DoLP, NIR) in its release
  layout, read by DELIVER's ``semseg/datasets/mcubes.MCubeS`` with its own ``Normalize`` / ``ToTensor`` (AoLP
  stacked [sin, cos, sin], DoLP and NIR repeated); ``--mcubes-eval`` adds DELIVER's evaluation of it on 1024×1224
  images (``FixScaleCrop(1024)``) against ``rgbx eval --option center_crop=1024``.
  ``--deliver-eval`` likewise runs DELIVER's evaluation of the DeLiVER model on 1042×1042 images (its test-time
  ``Resize(1024)`` of every sensor and the label) against ``rgbx eval --option resize=1024``.
* ``cmnext-nyu`` (with ``--deliver``): CMNeXt on NYU Depth V2 as DELIVER's ``semseg/datasets/nyu.NYU`` reads it (CMX's
  ``RGB/``, ``HHA/`` JPEGs and ``Label/``; HHA as its "depth", / 255).
* ``cmnext-mfnet`` (with ``--deliver``): CMNeXt on MFNet as DELIVER's ``semseg/datasets/mfnet.MFNet`` reads it
  (``rgb/`` and grey ``ther/`` JPEGs decoded by torchvision, thermal repeated to three channels, / 255). The network is
  the B2 (DELIVER's config trains B4: the same conversion, but a B4 with random weights is so deep that float32
  rounding alone moves its logits; see ``benchmarks/parity.md``).

Then the evaluation protocol (with ``--dformer``): DFormer's own ``utils/val_mm.evaluate`` and ``evaluate_msf``
(``--mst``: scales 0.5 … 1.5 and flipping) score the converted DFormer-T's reference network on a tree of
``--eval-size`` images (default 530×730, SUN RGB-D's size, which DFormer's multi-scale sizes round up), and
``rgbx eval`` scores the converted model on the same files (``--miou all``, ``--confusion``); the script prints both
mIoUs and how far the two confusion matrices are apart. The reference's NMF (its Ham head) is given rgbx's fixed
evaluation bases so that both are deterministic. With ``--cmx``, CMX's own ``sliding_eval_rgbX`` scores the converted
CMX-B0 on the NYU files as configured (scale 1) and with the README's "MS & Flip" (scales 0.75, 1, 1.25 + flip), against
``rgbx eval --scale-rule cmx --window 480x640``. ``--cmx-opencv-resize`` puts OpenCV's 8-bit resize in place of the
rule's float resize (a diagnostic: what is left is the rule's arithmetic).

Image files are PNG by default. ``--jpeg`` writes the RGB (and HHA) files as JPEG as the releases do; OpenCV (the
references) and Pillow (rgbx) may then decode them differently, which shows in the input difference.

References (nothing of them is committed to rgbx; fetch them outside the repository)::

    git clone https://github.com/VCIP-RGBD/DFormer /tmp/dformer_ref
    git clone https://github.com/huaaaliu/RGBX_Semantic_Segmentation /tmp/cmx_ref
    git clone https://github.com/jamycheung/DELIVER /tmp/deliver_ref
    pip install opencv-python-headless          # the references read images with OpenCV (DELIVER: torchvision)
    python benchmarks/parity_from_files.py --dformer /tmp/dformer_ref --cmx /tmp/cmx_ref --deliver /tmp/deliver_ref
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tempfile
import types
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from references import build_cmx_reference, randomize, stand_in_modules  # noqa: E402

from rgbx.cli.main import main as rgbx_main  # noqa: E402
from rgbx.data import build_dataset  # noqa: E402
from rgbx.data.sample import normalize_sample  # noqa: E402
from rgbx.engine.checkpoint import load_model  # noqa: E402
from rgbx.modalities import get_modality  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _load_file(path: Path, name: str, **stand_ins) -> types.ModuleType:
    """Import one reference file under a private name; ``stand_ins`` serve its absolute imports meanwhile."""
    with stand_in_modules(stand_ins):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# -- fake benchmark trees ------------------------------------------------------------------------------------------

def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour image with a few rectangles: image-like, and different in each channel."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([120 + 80 * np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], axis=-1)
    for _ in range(6):
        y, x = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
        img[y:y + h // 5, x:x + w // 5] = rng.integers(0, 255, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, jpeg: bool = False) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if jpeg else ".png"
    Image.fromarray(arr).save(path.with_suffix(suffix), **({"quality": 95} if jpeg else {}))
    return suffix


def make_nyu(root: Path, names, size, rng, jpeg: bool, hha: bool) -> str:
    """NYU Depth V2 in DFormer's (``hha=False``: 8-bit RGBA relative depth, 'RGB/<n>.jpg' lines) or CMX's layout."""
    h, w = size
    suffix = ".png"
    for n in names:
        suffix = _save(root / "RGB" / n, _scene(rng, h, w), jpeg)
        label = rng.integers(0, 41, (h, w)).astype(np.uint8)
        _save(root / "Label" / n, label)
        if hha:
            _save(root / "HHA" / n, _scene(rng, h, w), jpeg)
        else:
            grey = (255 * np.linspace(0, 1, w)[None] * np.linspace(0.3, 1, h)[:, None]).astype(np.uint8)
            _save(root / "Depth" / n, np.dstack([grey, grey, grey, np.full_like(grey, 255)]))  # plt.imsave: RGBA
    lines = [f"RGB/{n}.jpg" if not hha else n for n in names]
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return suffix


def make_mfnet(rgbx_root: Path, ref_root: Path, names, size, rng) -> None:
    """The same RGB-T pixels as MFNet's four-channel release (rgbx) and as CMX's RGB/ + Modal/ folders."""
    h, w = size
    for n in names:
        rgb = _scene(rng, h, w)
        thermal = _scene(rng, h, w)[..., 1]
        label = rng.integers(0, 9, (h, w)).astype(np.uint8)
        _save(rgbx_root / "images" / n, np.dstack([rgb, thermal]))
        _save(rgbx_root / "labels" / n, label)
        _save(ref_root / "RGB" / n, rgb)
        _save(ref_root / "Modal" / n, thermal)
        _save(ref_root / "Label" / n, label)
    for root in (rgbx_root, ref_root):
        (root / "test.txt").write_text("\n".join(names) + "\n")
        (root / "train.txt").write_text("\n".join(names) + "\n")


def make_deliver(root: Path, names, size, rng) -> None:
    """DeLiVER's release layout (one condition, the val split): RGB, HHA, rendered events, grey LiDAR, labels."""
    h, w = size
    for n in names:
        def path(folder: str, tag: str, n: str = n) -> Path:
            return root / folder / "cloud" / "val" / "MAP_1_point2" / f"{int(n):06d}_{tag}_front"

        _save(path("img", "rgb"), _scene(rng, h, w))
        _save(path("hha", "depth"), _scene(rng, h, w))
        events = np.full((h, w, 3), 255, np.uint8)  # white background, blue / red dots
        dots = rng.random((h, w))
        events[dots < 0.03] = (0, 0, 255)
        events[dots > 0.97] = (255, 0, 0)
        _save(path("event", "event"), events)
        grey = (rng.random((h, w)) < 0.1) * rng.integers(1, 255, (h, w))
        _save(path("lidar", "lidar"), grey.astype(np.uint8))
        _save(path("semantic", "semantic"), rng.integers(0, 26, (h, w)).astype(np.uint8))


def make_mcubes(root: Path, names, size, rng) -> None:
    """MCubeS's release layout (``multimodal_dataset/``): 8-bit RGB, AoLP as sin / cos arrays, DoLP, 8-bit NIR, the
    NIR mask and the SS guidance DELIVER's loader reads too, labels; each image 192 columns wider than ``size``
    (both loaders drop them)."""
    h, w = size[0], size[1] + 192
    for n in names:
        _save(root / "polL_color" / n, _scene(rng, h, w))
        angle = rng.uniform(0, np.pi, (h, w))
        for folder, arr in (("polL_aolp_sin", np.sin(2 * angle)), ("polL_aolp_cos", np.cos(2 * angle)),
                            ("polL_dolp", rng.uniform(0, 0.6, (h, w)))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / f"{n}.npy", arr.astype(np.float32))
        _save(root / "NIR_warped" / n, _scene(rng, h, w)[..., 0])
        _save(root / "NIR_warped_mask" / n, np.zeros((h, w), np.uint8))
        _save(root / "SS" / n, rng.integers(0, 25, (h, w)).astype(np.uint8))
        _save(root / "GT" / n, rng.integers(0, 20, (h, w)).astype(np.uint8))
    (root / "list_folder").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (root / "list_folder" / f"{split}.txt").write_text("\n".join(names) + "\n")


def make_mfnet_deliver(root: Path, names, size, rng) -> None:
    """MFNet as DELIVER's loader reads it: ``rgb/<n>.jpg``, a grey ``ther/<n>.jpg``, ``labels/<n>.png``."""
    h, w = size
    for n in names:
        _save(root / "rgb" / n, _scene(rng, h, w), jpeg=True)
        _save(root / "ther" / n, _scene(rng, h, w)[..., 1], jpeg=True)
        _save(root / "labels" / n, rng.integers(0, 9, (h, w)).astype(np.uint8))
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")


# -- the references' data loading ----------------------------------------------------------------------------------

def deliver_dataset_module(ref: Path, name: str) -> tuple[types.ModuleType, types.ModuleType]:
    """One of DELIVER's ``semseg/datasets/<name>.py`` files and its ``augmentations_mm``."""
    augmentations = _load_file(ref / "semseg" / "augmentations_mm.py", "_rgbx_ref_deliver_augmentations")
    module = _load_file(ref / "semseg" / "datasets" / f"{name}.py", f"_rgbx_ref_deliver_{name}",
                        einops=types.ModuleType("einops"), semseg=types.ModuleType("semseg"),
                        **{"semseg.augmentations_mm": augmentations})
    return module, augmentations


def mcubes_inputs(ref: Path, root: Path) -> list[list[torch.Tensor]]:
    """DELIVER's ``semseg/datasets/mcubes.MCubeS`` (MODALS image, aolp, dolp, nir as ``configs/mcubes_rgbadn``)
    with its test-time transform less ``FixScaleCrop``: on the release's 1024-high images that resizes nothing and
    keeps the central 1024 columns, which the small fake files here do not have (``Normalize``, ``ToTensor``)."""
    module, _ = deliver_dataset_module(ref, "mcubes")
    with redirect_stdout(io.StringIO()):
        dataset = module.MCubeS(str(root), "val", None, ["image", "aolp", "dolp", "nir"])
    dataset.transform_val = module.transforms.Compose([
        module.Normalize(mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD)), module.ToTensor()])
    return [[x[None] for x in dataset[i][0]] for i in range(len(dataset))]


def deliver_inputs(ref: Path, root: Path, name: str, cls: str, modals: list[str]) -> list[list[torch.Tensor]]:
    """DELIVER's ``semseg/datasets/<name>.<cls>`` (with the config's MODALS) and its ``Normalize``: ``deliver.DELIVER``
    (img, depth = the ``hha/`` folder, event, lidar; the test-time transform without its resize: the files are already
    the size fed), ``mfnet.MFNet`` (img, thermal), ``nyu.NYU`` (img, depth = the ``HHA/`` JPEGs)."""
    module, augmentations = deliver_dataset_module(ref, name)
    transform = augmentations.Compose([augmentations.Normalize(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))])
    with redirect_stdout(io.StringIO()):
        dataset = getattr(module, cls)(str(root), "val", transform, modals)
    return [[x[None] for x in dataset[i][0]] for i in range(len(dataset))]


def make_sun_to_pad(root: Path, names, rng, jpeg: bool) -> str:
    """SUN RGB-D-like files in DFormer's layout at two of SUN RGB-D's sensor sizes (Kinect v1 427×561, Xtion
    441×591), labels 0 (void) … 37, for the ``--pad_SUNRGBD`` case."""
    suffix = ".png"
    for i, n in enumerate(names):
        size = ((427, 561), (441, 591))[i % 2]
        suffix = make_nyu(root, [n], size, rng, jpeg, hha=False)
        _save(root / "Label" / n, rng.integers(0, 38, size).astype(np.uint8))
    lines = [f"RGB/{n}.jpg" for n in names]
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return suffix


def dformer_dataset(ref: Path, root: Path, suffix: str, pad: bool = False):
    """DFormer's dataset class with its test-time ``ValPre`` over a tree in its layout; ``pad``: its
    ``--pad_SUNRGBD`` (every file padded to 531×730 at the bottom and right), read as for DFormer-T (blue first)."""
    transforms = _load_file(ref / "utils" / "transforms.py", "_rgbx_ref_dformer_transforms")
    stand_ins = {"utils": types.ModuleType("utils"), "utils.transforms": transforms}
    loader = _load_file(ref / "utils" / "dataloader" / "dataloader.py", "_rgbx_ref_dformer_loader", **stand_ins)
    dataset_module = _load_file(ref / "utils" / "dataloader" / "RGBXDataset.py", "_rgbx_ref_dformer_dataset")
    config = types.SimpleNamespace(pad=pad)
    setting = {"rgb_root": str(root / "RGB"), "rgb_format": suffix, "gt_root": str(root / "Label"),
               "gt_format": ".png", "transform_gt": True, "x_root": str(root / "Depth"), "x_format": ".png",
               "x_single_channel": True, "train_source": str(root / "train.txt"),
               "eval_source": str(root / "test.txt"), "class_names": [str(i) for i in range(40)],
               "dataset_name": "NYUDepthv2", "backbone": "DFormer-Tiny"}
    pre = loader.ValPre(IMAGENET_MEAN, IMAGENET_STD, True, config)
    return dataset_module.RGBXDataset(setting, "val", pre)


def dformer_inputs(ref: Path, root: Path, suffix: str, pad: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dataset = dformer_dataset(ref, root, suffix, pad)
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        out.append((item["data"][None].float(), item["modal_x"][None].float()))
    return out


def cmx_inputs(ref: Path, root: Path, suffix: str, x_folder: str, single_channel: bool
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    transforms = _load_file(ref / "utils" / "transforms.py", "_rgbx_ref_cmx_transforms")
    dataset_module = _load_file(ref / "dataloader" / "RGBXDataset.py", "_rgbx_ref_cmx_dataset")
    setting = {"rgb_root": str(root / "RGB"), "rgb_format": suffix, "gt_root": str(root / "Label"),
               "gt_format": ".png", "transform_gt": False, "x_root": str(root / x_folder),
               "x_format": suffix if x_folder == "HHA" else ".png", "x_single_channel": single_channel,
               "train_source": str(root / "train.txt"), "eval_source": str(root / "test.txt"),
               "class_names": []}
    dataset = dataset_module.RGBXDataset(setting, "val", None)
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        # engine/evaluator.py process_image_rgbX: normalise both with ImageNet's statistics, then C, H, W
        rgb = transforms.normalize(item["data"], IMAGENET_MEAN, IMAGENET_STD).transpose(2, 0, 1)
        x = transforms.normalize(item["modal_x"], IMAGENET_MEAN, IMAGENET_STD).transpose(2, 0, 1)
        out.append((torch.from_numpy(np.ascontiguousarray(rgb))[None].float(),
                    torch.from_numpy(np.ascontiguousarray(x))[None].float()))
    return out


# -- the reference models ------------------------------------------------------------------------------------------

class DFormerReference(torch.nn.Module):
    """DFormer's ``EncoderDecoder`` at test time: encoder (depth channel 0) → LightHam head → bilinear resize."""

    def __init__(self, encoder, head):
        super().__init__()
        self.backbone, self.decode_head = encoder, head

    def forward(self, rgb, x):
        outs, _ = self.backbone(rgb, x)
        logits = self.decode_head(outs)
        return torch.nn.functional.interpolate(logits, size=rgb.shape[2:], mode="bilinear", align_corners=False)


def dformer_reference(ref: Path, gen: torch.Generator) -> torch.nn.Module:
    import parity_dformer  # benchmarks/parity_dformer.py: DFormer's files with stand-ins for mmcv / mmseg names

    encoders, ham = parity_dformer._load_reference(ref)
    with redirect_stdout(io.StringIO()):  # the reference prints its settings
        encoder = encoders.DFormer_Tiny(drop_path_rate=0.1, norm_cfg=dict(type="BN"))
        dims = [int(encoder.stages[i][0].layer_scale_1.numel()) for i in range(4)]
        head = ham.LightHamHead(in_channels=dims[1:], num_classes=40, in_index=[1, 2, 3], norm_cfg=dict(type="BN"),
                                channels=512)
    model = DFormerReference(encoder, head)
    randomize(model, gen)
    for m in head.modules():  # DFormer's training code sets the head's BatchNorm eps to 1e-3
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    return model.eval()


# -- the comparison ------------------------------------------------------------------------------------------------

def convert(state: dict, tmp: Path, name: str, modalities, encoding: str) -> torch.nn.Module:
    torch.save(state, tmp / f"{name}.pth")
    out = tmp / f"{name}_{encoding}.safetensors"
    with redirect_stdout(io.StringIO()):
        code = rgbx_main(["convert", str(tmp / f"{name}.pth"), "--modalities", *modalities, "--input-encoding",
                          encoding, "--out", str(out)])
    if code:
        raise SystemExit(f"rgbx convert failed for {name}")
    model, _ = load_model(out)
    return model.eval()


def rgbx_inputs(dataset_name: str, root: Path, **options) -> list[dict[str, torch.Tensor]]:
    dataset = build_dataset(dataset_name, root, "test", **options)
    return [{m: x[None] for m, x in normalize_sample(dataset.load(i))["inputs"].items()} for i in range(len(dataset))]


def first_layer_inputs(model, inputs) -> dict[str, torch.Tensor]:
    """What the model's first layers receive, for the input difference (after the input encoding)."""
    with torch.no_grad():
        encoded, _ = model.encoder.prepare(inputs)
    return encoded


def cmnext_reference(ref: Path, gen: torch.Generator, variant: str = "CMNeXt-B2", num_classes: int = 25,
                     modals=("img", "depth", "event", "lidar")) -> torch.nn.Module:
    import parity_cmnext  # benchmarks/parity_cmnext.py: DELIVER's model files with stand-ins for what they import

    module = parity_cmnext._load_reference(ref)
    model = module.CMNeXt(variant, num_classes, list(modals))
    randomize(model, gen, layer_scale=(0.2, 1.0))
    return model.eval()


class _ListInput(torch.nn.Module):
    """DELIVER's models take the list of sensors, in MODALS order, as one argument."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(list(inputs))


def share_nmf_bases(reference, model) -> None:
    """The reference's NMF draws fresh random bases at every forward pass, also in evaluation; rgbx's uses one
    fixed set there. Give the reference rgbx's fixed set (its ``RAND_INIT=False`` path), so both are deterministic
    and the comparisons exact."""
    ham = reference.decode_head.hamburger.ham
    ham.rand_init = False
    ham.register_buffer("bases", model.head.hamburger.ham.eval_bases.clone())


def compare(case: str, reference, ref_inputs, models: dict, inputs) -> list[str]:
    """``ref_inputs``: per image, the reference's input tensors in the model's modality order."""
    rows = []
    ref_logits = []
    for tensors in ref_inputs:
        with torch.no_grad():
            ref_logits.append(reference(*tensors))
    for encoding, model in models.items():
        d_in, d_out, agree, total = 0.0, 0.0, 0, 0
        for tensors, sample, want in zip(ref_inputs, inputs, ref_logits, strict=True):
            seen = first_layer_inputs(model, sample)
            for got, x in zip(seen.values(), tensors, strict=True):  # a 1-channel sensor fed repeated: channel 0
                d_in = max(d_in, (got - x[:, : got.shape[1]]).abs().max().item())
            with torch.no_grad():
                got = model(sample).logits
            d_out = max(d_out, (got - want).abs().max().item())
            agree += int((got.argmax(1) == want.argmax(1)).sum())
            total += want.shape[0] * want.shape[2] * want.shape[3]
        scale = max(t.abs().max().item() for t in ref_logits)
        rows.append(f"| {case} | {encoding} | {d_in:.2e} | {d_out:.2e} | {scale:.3g} | {100 * agree / total:.3f} % |")
    return rows


def dformer_evaluation(ref: Path, reference, root: Path, suffix: str, msf: bool, sliding: bool = False) -> torch.Tensor:
    """DFormer's own ``utils/val_mm.evaluate`` (``msf=False``) or ``evaluate_msf`` with ``--mst``'s scales 0.5 …
    1.5 and flipping, whole images or (``sliding``: its ``--sliding``) 480×480 windows every ``int(2/3 × 480)``
    pixels (the SUN RGB-D configs' ``eval_crop_size`` and ``eval_stride_rate``), over its dataset class and
    ``ValPre``: the confusion matrix it scores (its ``Metrics.hist``)."""
    stub = types.ModuleType
    matplotlib = stub("matplotlib")
    matplotlib.pyplot, matplotlib.colors = stub("matplotlib.pyplot"), stub("matplotlib.colors")
    matplotlib.colors.ListedColormap = None
    tabulate = stub("tabulate")
    tabulate.tabulate = None
    metrics = _load_file(ref / "utils" / "metrics_new.py", "_rgbx_ref_dformer_metrics")
    stand_ins = {"matplotlib": matplotlib, "matplotlib.pyplot": matplotlib.pyplot,
                 "matplotlib.colors": matplotlib.colors, "tabulate": tabulate, "utils": stub("utils"),
                 "utils.metrics_new": metrics}
    val_mm = _load_file(ref / "utils" / "val_mm.py", "_rgbx_ref_dformer_val_mm", **stand_ins)
    loader = torch.utils.data.DataLoader(dformer_dataset(ref, root, suffix), batch_size=1)
    config = types.SimpleNamespace(num_classes=40, background=255, dataset_name="NYUDepthv2",
                                   eval_crop_size=[480, 480], eval_stride_rate=2 / 3)
    engine = types.SimpleNamespace(distributed=False, local_rank=0)
    with torch.no_grad(), redirect_stdout(io.StringIO()):
        if msf:
            result = val_mm.evaluate_msf(reference, loader, config, "cpu", [0.5, 0.75, 1.0, 1.25, 1.5], True,
                                         engine, sliding=sliding)
        else:
            result = val_mm.evaluate(reference, loader, config, "cpu", engine)
    return result.hist.long()


def rgbx_evaluation(model_file: Path, root: Path, tmp: Path, *flags: str, sensors: str = "rgb+depth",
                    miou: str = "all", dataset: str = "nyudepthv2", split: str = "test") -> tuple[torch.Tensor, float]:
    """``rgbx eval`` on the files: its confusion matrix (``--confusion``) and mIoU (``--json``)."""
    import json

    out = tmp / "eval"
    with redirect_stdout(io.StringIO()):
        code = rgbx_main(["eval", str(model_file), "--data", str(root), "--dataset", dataset, "--split", split,
                          "--miou", miou, "--json", str(out / "eval.json"), "--confusion", str(out), *flags])
    if code:
        raise SystemExit(f"rgbx eval {' '.join(flags)} failed")
    rows = (out / f"{sensors}.csv").read_text().splitlines()[1:]
    matrix = torch.tensor([[int(v) for v in row.split(",")[1:]] for row in rows])
    report = json.loads((out / "eval.json").read_text())
    return matrix, 100 * report["subsets"][sensors]["all"]["miou"]


def opencv_resize(name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``rgbx.engine.inference._cmx_resize`` as CMX computes it: the 8-bit image (rgbx's [0, 1] intensities × 255)
    resized by ``cv2.resize(..., fx, fy, INTER_LINEAR)`` in OpenCV's fixed point, back to rgbx's normalisation."""
    import cv2

    spec = get_modality(name)
    out = []
    for image in spec.denormalize(x):
        levels = np.clip(np.round(image.numpy().transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        resized = cv2.resize(levels, None, fx=size[1] / x.shape[-1], fy=size[0] / x.shape[-2],
                             interpolation=cv2.INTER_LINEAR)
        out.append(torch.from_numpy(resized.astype(np.float32).reshape(*size, -1).transpose(2, 0, 1) / 255))
    return spec.normalize(torch.stack(out))


class _OnTheCPU(torch.nn.Module):
    """CMX's evaluator moves its network with ``.to(input.get_device())``, which is -1 on the CPU: stay put."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def to(self, *args, **kwargs):
        return self

    def forward(self, rgb, x):
        return self.network(rgb, x)


class _NoCuda:
    """CMX's evaluator calls ``.cuda(device)`` and ``torch.cuda.device(...)``; on the CPU both become no-ops."""

    def __enter__(self):
        self._cuda, self._device = torch.Tensor.cuda, torch.cuda.device
        torch.Tensor.cuda = lambda t, *args, **kwargs: t

        class _Device:
            def __init__(self, *args):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        torch.cuda.device = _Device

    def __exit__(self, *exc):
        torch.Tensor.cuda, torch.cuda.device = self._cuda, self._device


def cmx_evaluation(ref: Path, reference, root: Path, suffix: str, class_num: int, scales=(1,),
                   flip: bool = False) -> tuple[torch.Tensor, float]:
    """CMX's own ``engine/evaluator.Evaluator.sliding_eval_rgbX`` (``eval.py``'s ``func_per_iteration`` with the NYU
    config: crop 480×640, stride 2/3; ``eval_scale_array`` = ``scales``, ``eval_flip`` = ``flip``: [1] and False as
    configured, [0.75, 1, 1.25] and True for the README's "MS & Flip") over its dataset class, scored by its
    ``utils/metric`` ``hist_info`` / ``compute_score``: the confusion matrix and the mIoU it reports (``nanmean``)."""
    import collections.abc
    import logging

    transforms = _load_file(ref / "utils" / "transforms.py", "_rgbx_ref_cmx_transforms")
    # written for Python < 3.10: collections.Iterable is collections.abc.Iterable now (this module's name only)
    transforms.collections = types.SimpleNamespace(Iterable=collections.abc.Iterable)
    metric = _load_file(ref / "utils" / "metric.py", "_rgbx_ref_cmx_metric")
    stub = types.ModuleType
    logger_module = stub("engine.logger")
    logger_module.get_logger = lambda *a, **k: logging.getLogger("cmx-reference")
    pyt_utils = stub("utils.pyt_utils")
    pyt_utils.load_model = pyt_utils.link_file = pyt_utils.ensure_dir = None
    evaluator = _load_file(ref / "engine" / "evaluator.py", "_rgbx_ref_cmx_evaluator", engine=stub("engine"),
                           **{"engine.logger": logger_module, "utils": stub("utils"), "utils.pyt_utils": pyt_utils,
                              "utils.transforms": transforms})
    dataset_module = _load_file(ref / "dataloader" / "RGBXDataset.py", "_rgbx_ref_cmx_dataset")
    setting = {"rgb_root": str(root / "RGB"), "rgb_format": suffix, "gt_root": str(root / "Label"),
               "gt_format": ".png", "transform_gt": True, "x_root": str(root / "HHA"), "x_format": suffix,
               "x_single_channel": False, "train_source": str(root / "train.txt"),
               "eval_source": str(root / "test.txt"), "class_names": []}
    dataset = dataset_module.RGBXDataset(setting, "val", None)
    ev = evaluator.Evaluator.__new__(evaluator.Evaluator)  # its __init__ starts a process pool for several GPUs
    ev.class_num, ev.norm_mean, ev.norm_std = class_num, IMAGENET_MEAN, IMAGENET_STD
    ev.multi_scales, ev.is_flip, ev.val_func = list(scales), flip, _OnTheCPU(reference)
    hist = np.zeros((class_num, class_num), dtype=np.int64)
    correct = labeled = 0
    with _NoCuda():
        for i in range(len(dataset)):
            item = dataset[i]
            pred = ev.sliding_eval_rgbX(item["data"], item["modal_x"], (480, 640), 2 / 3, None)
            h, lab, cor = metric.hist_info(class_num, pred, item["label"])
            hist, labeled, correct = hist + h, labeled + lab, correct + cor
    miou = metric.compute_score(hist, correct, labeled)[1]
    return torch.from_numpy(hist), 100 * float(miou)


def deliver_evaluation(ref: Path, reference, root: Path) -> tuple[torch.Tensor, float]:
    """DELIVER's ``tools/val_mm.evaluate`` on DeLiVER's val split as ``configs/deliver_rgbdel`` sets it up: its
    dataset with ``get_val_augmentation([1024, 1024])`` (``Resize``: image and label to 1024 on the shorter side),
    the model's softmax, ``semseg/metrics.Metrics``. torchvision's tensor ``resize`` antialiases by default since
    0.17; DELIVER pins 0.10, which did not, so its ``TF.resize`` is called here with ``antialias=False``."""
    import torchvision.transforms.functional as TF

    dataset_module, augmentations = deliver_dataset_module(ref, "deliver")
    augmentations.TF = types.SimpleNamespace(**{**vars(TF), "resize": lambda *a, **k: TF.resize(*a, **k,
                                                                                              antialias=False)})
    with redirect_stdout(io.StringIO()):
        dataset = dataset_module.DELIVER(str(root), "val", augmentations.get_val_augmentation([1024, 1024]),
                                         ["img", "depth", "event", "lidar"])
    return deliver_scores(ref, reference, dataset)


def mcubes_evaluation(ref: Path, reference, root: Path) -> tuple[torch.Tensor, float]:
    """DELIVER's ``tools/val_mm.evaluate`` on MCubeS: its dataset's "val" split (``list_folder/test.txt``) with its
    own test-time transform (``FixScaleCrop(1024)``), the model's softmax, ``semseg/metrics.Metrics``."""
    module, _ = deliver_dataset_module(ref, "mcubes")
    with redirect_stdout(io.StringIO()):
        dataset = module.MCubeS(str(root), "val", None, ["image", "aolp", "dolp", "nir"])
    return deliver_scores(ref, reference, dataset)


def deliver_msf_evaluation(ref: Path, reference, root: Path, name: str, cls: str, modals: list[str],
                           size: tuple[int, int], scales: list[float]) -> tuple[torch.Tensor, float]:
    """DELIVER's ``tools/val_mm.evaluate_msf`` (its configs' ``EVAL.MSF``: scales and flipping) over its dataset class
    with ``get_val_augmentation(size)``, as ``val_mm.main`` runs it when ``MSF.ENABLE`` is set."""
    import collections

    augmentations = _load_file(ref / "semseg" / "augmentations_mm.py", "_rgbx_ref_deliver_augmentations")
    module, _ = deliver_dataset_module(ref, name)
    metrics_module = _load_file(ref / "semseg" / "metrics.py", "_rgbx_ref_deliver_metrics")
    stub = types.ModuleType
    utils = stub("semseg.utils.utils")
    for attr in ("setup_cudnn", "fix_seeds", "cleanup_ddp", "setup_ddp", "get_logger", "cal_flops", "print_iou"):
        setattr(utils, attr, None)
    quiet = stub("tqdm")
    quiet.tqdm = lambda iterable, *a, **k: iterable
    tabulate = stub("tabulate")
    tabulate.tabulate = None
    val_mm = _load_file(ref / "tools" / "val_mm.py", "_rgbx_ref_deliver_val_mm", yaml=stub("yaml"), tqdm=quiet,
                        tabulate=tabulate, semseg=stub("semseg"), **{
                            "semseg.models": stub("semseg.models"), "semseg.datasets": stub("semseg.datasets"),
                            "semseg.augmentations_mm": augmentations, "semseg.metrics": metrics_module,
                            "semseg.utils": stub("semseg.utils"), "semseg.utils.utils": utils})
    with redirect_stdout(io.StringIO()):
        dataset = getattr(module, cls)(str(root), "val", augmentations.get_val_augmentation(list(size)), modals)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    captured = collections.defaultdict(list)
    original = metrics_module.Metrics.update

    def update(self, pred, target):  # keep the matrix it scores
        original(self, pred, target)
        captured["hist"] = [self.hist]

    metrics_module.Metrics.update = update
    try:
        with torch.no_grad():
            val_mm.evaluate_msf(reference, loader, "cpu", scales, True)
    finally:
        metrics_module.Metrics.update = original
    hist = captured["hist"][0]
    return hist.long(), reference_miou(hist)


def deliver_scores(ref: Path, reference, dataset) -> tuple[torch.Tensor, float]:
    """``tools/val_mm.evaluate``'s loop: each sample's softmax into ``semseg/metrics.Metrics``; its confusion matrix
    and mIoU."""
    metrics_module = _load_file(ref / "semseg" / "metrics.py", "_rgbx_ref_deliver_metrics")
    metrics = metrics_module.Metrics(dataset.n_classes, dataset.ignore_label, "cpu")
    for i in range(len(dataset)):
        images, label = dataset[i]
        with torch.no_grad():
            metrics.update(reference([x[None] for x in images]).softmax(dim=1), label[None])
    return metrics.hist.long(), reference_miou(metrics.hist)


def reference_miou(hist: torch.Tensor) -> float:
    """DFormer's (and DELIVER's) ``Metrics.compute_iou``: IoU per class with NaN (a class in neither) as 0, mean over all."""
    hist = hist.double()
    ious = hist.diag() / (hist.sum(0) + hist.sum(1) - hist.diag())
    ious[ious.isnan()] = 0.0
    return 100 * ious.mean().item()


def evaluation_rows(ref: Path, reference, model_file: Path, root: Path, suffix: str) -> list[str]:
    rows = []
    msf_flags = ["--scales", "0.5", "0.75", "1", "1.25", "1.5", "--flip"]
    window = ["--window", "480x480", "--stride", "320x320"]
    for msf, sliding, what in ((False, False, "DFormer: `evaluate`, one scale, no flip"),
                               (True, False, "DFormer: `evaluate_msf`, 5 scales + flip"),
                               (True, True, "DFormer: `evaluate_msf` with `--sliding` (480×480 windows)")):
        want = dformer_evaluation(ref, reference, root, suffix, msf, sliding)
        rules = ("rgbx",) if not msf else ("dformer", "rgbx")
        for rule in rules:
            flags = [*msf_flags, "--scale-rule", rule, *(window if sliding else [])] if msf else []
            got, miou = rgbx_evaluation(model_file, root, model_file.parent, *flags)
            differ = int((got - want).abs().sum()) // 2
            command = " ".join(["rgbx eval", *flags])
            rows.append(f"| {what} | `{command}` | {reference_miou(want):.4f} | {miou:.4f} | "
                        f"{differ} of {int(want.sum())} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dformer", type=Path, help="a checkout of github.com/VCIP-RGBD/DFormer")
    p.add_argument("--cmx", type=Path, help="a checkout of github.com/huaaaliu/RGBX_Semantic_Segmentation")
    p.add_argument("--deliver", type=Path, help="a checkout of github.com/jamycheung/DELIVER (CMNeXt on DeLiVER; "
                   "needs torchvision)")
    p.add_argument("--deliver-size", default="256x256",
                   help="image size of the DeLiVER case (default 256x256; the release's is 1042x1042)")
    p.add_argument("--deliver-eval", action="store_true",
                   help="with --deliver: also score the converted DeLiVER model with DELIVER's evaluation and rgbx "
                        "eval on two fake images of the release's 1042×1042 size (minutes on a CPU)")
    p.add_argument("--mcubes-eval", action="store_true",
                   help="with --deliver: also score the converted MCubeS model with DELIVER's evaluation and rgbx "
                        "eval on two fake images of the release's 1024×1224 size (minutes on a CPU)")
    p.add_argument("--size", default="480x640", help="image size HxW of the fake files (default 480x640)")
    p.add_argument("--images", type=int, default=2, help="images per case (default 2)")
    p.add_argument("--jpeg", action="store_true", help="RGB / HHA files as JPEG, as the releases ship them")
    p.add_argument("--eval-size", default="530x730",
                   help="image size of the evaluation-protocol check (default 530x730, SUN RGB-D's: not a multiple "
                        "of 32, so DFormer's multi-scale evaluation resizes even at scale 1)")
    p.add_argument("--deliver-msf", action="store_true",
                   help="with --deliver: also score the converted MFNet CMNeXt with DELIVER's multi-scale + flip "
                        "evaluation (val_mm.evaluate_msf) and rgbx eval --scale-rule dformer (minutes on a CPU)")
    p.add_argument("--cmx-opencv-resize", action="store_true",
                   help="with --cmx: rgbx's cmx scale rule resizes the 8-bit inputs with OpenCV, as CMX does, instead "
                        "of in float (a diagnostic)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.dformer or args.cmx or args.deliver):
        p.error("give --dformer, --cmx and / or --deliver")
    try:
        import cv2  # noqa: F401
    except ImportError:
        p.error("the references read images with OpenCV: pip install opencv-python-headless")
    torch.set_num_threads(args.threads)
    if args.cmx_opencv_resize:
        import rgbx.engine.inference

        rgbx.engine.inference._cmx_resize = opencv_resize
    size = tuple(int(v) for v in args.size.split("x"))
    names = [f"{i}" for i in range(args.images)]
    eval_size = tuple(int(v) for v in args.eval_size.split("x"))
    rows, eval_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)
        if args.dformer:
            root = tmp / "NYUDepthv2_dformer"
            suffix = make_nyu(root, names, size, rng, args.jpeg, hha=False)
            reference = dformer_reference(args.dformer, gen)
            state = {**{f"backbone.{k}": v for k, v in reference.backbone.state_dict().items()},
                     **{f"decode_head.{k}": v for k, v in reference.decode_head.state_dict().items()}}
            models = {e: convert(state, tmp, "dformer", ["rgb", "depth"], e) for e in ("reference", "rgbx")}
            share_nmf_bases(reference, models["reference"])
            rows += compare("dformer-nyu", reference, dformer_inputs(args.dformer, root, suffix), models,
                            rgbx_inputs("nyudepthv2", root))
            # DFormerv2's SUN RGB-D evaluation (eval.py --pad_SUNRGBD): ValPre pads image, depth image and label to
            # 531×730; rgbx's sunrgbd loader with pad_to=[531,730]
            sun = tmp / "SUNRGBD_pad"
            sun_suffix = make_sun_to_pad(sun, names, rng, args.jpeg)
            rows += compare("dformer-sunrgbd, padded to 531×730 (`--pad_SUNRGBD` / `pad_to`)", reference,
                            dformer_inputs(args.dformer, sun, sun_suffix, pad=True), models,
                            rgbx_inputs("sunrgbd", sun, modalities=["rgb", "depth"], pad_to=[531, 730]))
            eval_root = tmp / "NYUDepthv2_eval"
            eval_suffix = make_nyu(eval_root, names, eval_size, rng, args.jpeg, hha=False)
            eval_rows += evaluation_rows(args.dformer, reference, tmp / "dformer_reference.safetensors", eval_root,
                                         eval_suffix)
        if args.cmx:
            reference = build_cmx_reference(args.cmx, backbone="mit_b0", num_classes=40)
            randomize(reference, gen)
            reference.eval()
            root = tmp / "NYUDepthv2_cmx"
            suffix = make_nyu(root, names, size, rng, args.jpeg, hha=True)
            models = {e: convert(reference.state_dict(), tmp, "cmx_nyu", ["rgb", "hha"], e)
                      for e in ("reference", "rgbx")}
            rows += compare("cmx-nyu (HHA)", reference, cmx_inputs(args.cmx, root, suffix, "HHA", False), models,
                            rgbx_inputs("nyudepthv2", root))
            cmx_rule = ["--scale-rule", "cmx", "--window", "480x640"]
            for scales, flip, what, candidates in (
                    ((1,), False, "NYU config: scale 1, no flip",
                     [[]] * (size == (480, 640)) + [cmx_rule]),  # CMX pads a smaller image to its crop
                    ((0.75, 1, 1.25), True, "README's MS & Flip: scales 0.75, 1, 1.25 + flip",
                     [["--scales", "0.75", "1", "1.25", "--flip", *cmx_rule],
                      ["--scales", "0.75", "1", "1.25", "--flip"]])):
                want, want_miou = cmx_evaluation(args.cmx, reference, root, suffix, 40, scales, flip)
                for flags in candidates:
                    got, got_miou = rgbx_evaluation(tmp / "cmx_nyu_reference.safetensors", root, tmp, *flags,
                                                    sensors="rgb+hha", miou="present")
                    eval_rows.append(f"| CMX: `eval.py`'s `sliding_eval_rgbX` ({what}; {size[0]}×{size[1]}) | "
                                     f"`{' '.join(['rgbx eval', *flags])}` (`--miou present`) | {want_miou:.4f} | "
                                     f"{got_miou:.4f} | {int((got - want).abs().sum()) // 2} of {int(want.sum())} |")
            reference = build_cmx_reference(args.cmx, backbone="mit_b0", num_classes=9)
            randomize(reference, gen)
            reference.eval()
            make_mfnet(tmp / "MFNet", tmp / "MFNet_cmx", names, size, rng)
            models = {e: convert(reference.state_dict(), tmp, "cmx_mfnet", ["rgb", "thermal"], e)
                      for e in ("reference", "rgbx")}
            rows += compare("cmx-mfnet (thermal)", reference, cmx_inputs(args.cmx, tmp / "MFNet_cmx", ".png",
                                                                        "Modal", True), models,
                            rgbx_inputs("mfnet", tmp / "MFNet"))
        if args.deliver:
            root = tmp / "DELIVER"
            make_deliver(root, names, tuple(int(v) for v in args.deliver_size.split("x")), rng)
            reference = cmnext_reference(args.deliver, gen)
            modalities = ["rgb", "hha", "event_image", "lidar"]  # DELIVER's MODALS img, depth (= hha/), event, lidar
            models = {e: convert(reference.state_dict(), tmp, "cmnext", modalities, e) for e in ("reference", "rgbx")}
            dataset = build_dataset("deliver", root, "val", modalities=modalities, event_format="image")
            inputs = [{m: x[None] for m, x in normalize_sample(dataset.load(i))["inputs"].items()}
                      for i in range(len(dataset))]
            rows += compare("cmnext-deliver (RGB + HHA + event image + LiDAR)", _ListInput(reference),
                            deliver_inputs(args.deliver, root, "deliver", "DELIVER", ["img", "depth", "event", "lidar"]),
                            models, inputs)
            if args.deliver_eval:
                root = tmp / "DELIVER_eval"
                make_deliver(root, names, (1042, 1042), rng)  # the release's size
                want, want_miou = deliver_evaluation(args.deliver, reference, root)
                model_file = tmp / "cmnext_reference.safetensors"
                flags = ["--option", "event_format=image"]
                got, got_miou = rgbx_evaluation(model_file, root, tmp, *flags, "--option", "resize=1024",
                                                dataset="deliver", split="val", sensors="+".join(modalities))
                eval_rows.append(f"| DELIVER: `val_mm.evaluate` on DeLiVER (`Resize(1024)` of images and labels, "
                                 f"`Metrics`) | `rgbx eval --dataset deliver --miou all --option event_format=image "
                                 f"--option resize=1024` | {want_miou:.4f} | {got_miou:.4f} | "
                                 f"{int((got - want).abs().sum()) // 2} of {int(want.sum())} |")
                got, got_miou = rgbx_evaluation(model_file, root, tmp, *flags, "--scales", "0.9827",
                                                dataset="deliver", split="val", sensors="+".join(modalities))
                eval_rows.append(f"| the same | `rgbx eval --dataset deliver --miou all --option event_format=image "
                                 f"--scales 0.9827` (the network fed 1024×1024, scored at the labels' 1042×1042) | "
                                 f"{want_miou:.4f} | {got_miou:.4f} | – ({int(got.sum())} pixels scored) |")

            mcubes_size = tuple(int(v) for v in args.deliver_size.split("x"))
            root = tmp / "MCubeS" / "multimodal_dataset"
            make_mcubes(root, names, mcubes_size, rng)
            reference = cmnext_reference(args.deliver, gen, "CMNeXt-B2", 20, ("image", "aolp", "dolp", "nir"))
            modalities = ["rgb", "aolp", "dolp", "nir"]
            models = {e: convert(reference.state_dict(), tmp, "cmnext_mcubes", modalities, e)
                      for e in ("reference", "rgbx")}
            rows += compare("cmnext-mcubes (RGB + AoLP + DoLP + NIR)", _ListInput(reference),
                            mcubes_inputs(args.deliver, root), models, rgbx_inputs("mcubes", root))
            if args.mcubes_eval:
                root = tmp / "MCubeS_eval" / "multimodal_dataset"
                make_mcubes(root, names, (1024, 1032), rng)  # the release's 1024×1224 images
                want, want_miou = mcubes_evaluation(args.deliver, reference, root)
                got, got_miou = rgbx_evaluation(tmp / "cmnext_mcubes_reference.safetensors", root, tmp,
                                                "--option", "center_crop=1024", dataset="mcubes",
                                                sensors="+".join(modalities))
                eval_rows.append(f"| DELIVER: `val_mm.evaluate` on MCubeS (`FixScaleCrop(1024)`, `Metrics`) | "
                                 f"`rgbx eval --dataset mcubes --split test --miou all --option center_crop=1024` | "
                                 f"{want_miou:.4f} | {got_miou:.4f} | {int((got - want).abs().sum()) // 2} of "
                                 f"{int(want.sum())} |")

            # DELIVER's readers of MFNet (rgb/ + ther/ JPEGs) and NYU Depth V2 (CMX's RGB/ + HHA/ JPEGs, HHA as its
            # "depth"): (case, tree, DELIVER's file / class / MODALS, classes, rgbx's dataset and sensors)
            for case, root, (name, cls, modals), classes, dataset, sensors in (
                    ("cmnext-mfnet (RGB + thermal, JPEG files)", tmp / "MFNet_deliver",
                     ("mfnet", "MFNet", ["img", "thermal"]), 9, "mfnet", ["rgb", "thermal"]),
                    ("cmnext-nyu (RGB + HHA, JPEG files)", tmp / "NYUDepthv2_deliver",
                     ("nyu", "NYU", ["img", "depth"]), 40, "nyudepthv2", ["rgb", "hha"])):
                if dataset == "mfnet":
                    make_mfnet_deliver(root, names, size, rng)
                else:
                    make_nyu(root, names, size, rng, jpeg=True, hha=True)
                reference = cmnext_reference(args.deliver, gen, "CMNeXt-B2", classes, modals)
                models = {e: convert(reference.state_dict(), tmp, f"cmnext_{name}", sensors, e)
                          for e in ("reference", "rgbx")}
                rows += compare(case, _ListInput(reference), deliver_inputs(args.deliver, root, name, cls, modals),
                                models, rgbx_inputs(dataset, root))
                if args.deliver_msf and dataset == "mfnet":
                    scales = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # configs/mfnet_rgbt.yaml EVAL.MSF
                    want, want_miou = deliver_msf_evaluation(args.deliver, reference, root, name, cls,
                                                             modals, size, scales)
                    flags = ["--scales", *(f"{v:g}" for v in scales), "--flip", "--scale-rule", "dformer"]
                    got, got_miou = rgbx_evaluation(tmp / f"cmnext_{name}_reference.safetensors", root, tmp, *flags,
                                                    dataset=dataset, sensors="+".join(sensors))
                    eval_rows.append(f"| DELIVER: `val_mm.evaluate_msf` on MFNet (`EVAL.MSF`: 6 scales + flip; "
                                     f"CMNeXt-B2, {size[0]}×{size[1]}) | `rgbx eval --dataset mfnet --split test "
                                     f"--miou all {' '.join(flags)}` | {want_miou:.4f} | {got_miou:.4f} | "
                                     f"{int((got - want).abs().sum()) // 2} of {int(want.sum())} |")
    print(f"torch {torch.__version__}, fp32, eval, {args.images} images of {size[0]}×{size[1]} per case "
          f"(DeLiVER: {args.deliver_size}), "
          f"{'JPEG' if args.jpeg else 'PNG'} RGB / HHA files")
    print("| case | rgbx convert --input-encoding | max abs input difference | max abs logit difference | "
          "max abs logit | argmax agreement with the reference |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if eval_rows:
        print(f"\nThe references' evaluation code against rgbx eval, on the same files (DFormer: the converted DFormer-T "
              f"on {args.images} images of {eval_size[0]}×{eval_size[1]}, mIoU over all 40 classes as DFormer counts "
              f"it; CMX: the converted CMX-B0 on the NYU-HHA images above, mIoU over the classes present; DeLiVER / "
              f"MCubeS: the converted CMNeXt-B2 on {args.images} images of 1042×1042 / 1024×1224, mIoU over all 25 / 20 "
              f"classes):")
        print("| the reference's protocol | rgbx | the reference's mIoU | rgbx's mIoU | confusion matrices apart "
              "(Σ|Δ| / 2, pixels) |")
        print("|---|---|---|---|---|")
        print("\n".join(eval_rows))


if __name__ == "__main__":
    main()
