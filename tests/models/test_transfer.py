"""Starting a model from another trained model (rgbx.models.transfer): other classes, other sensors, refusals."""

from __future__ import annotations

import pytest
import torch

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models import create_model
from rgbx.models.model_file import save_model
from rgbx.models.transfer import transfer_weights

NYU_LIKE = ["wall", "floor", "chair", "table", "window"]


def _model(modalities=("rgb", "depth"), num_classes=5, fusion="cmx", backbone="mit_nano", seed=0):
    torch.manual_seed(seed)
    return create_model(backbone=backbone, fusion=fusion, modalities=list(modalities), num_classes=num_classes,
                        head_channels=16)


def _saved(tmp_path, model, classes, name="source.safetensors"):
    return save_model(tmp_path / name, model, {"name": "src", "classes": classes, "palette": [], "ignore_index": 255})


def test_other_classes_take_the_rows_of_the_same_name(tmp_path):
    source = _model()
    path = _saved(tmp_path, source, NYU_LIKE)
    target = _model(num_classes=3, seed=1)
    fresh_w = target.head.classifier.weight.detach().clone()
    report = transfer_weights(target, path, classes=["floor", "robot", "wall"])

    theirs, ours = source.state_dict(), target.state_dict()
    for key in ours:
        if not key.startswith("head.classifier"):
            assert torch.equal(ours[key], theirs[key]), key
    w, b = ours["head.classifier.weight"], ours["head.classifier.bias"]
    assert torch.equal(w[0], theirs["head.classifier.weight"][1])  # floor
    assert torch.equal(w[2], theirs["head.classifier.weight"][0])  # wall
    assert torch.equal(b[2], theirs["head.classifier.bias"][0])
    assert torch.equal(w[1], fresh_w[1])  # robot: not in the file, keeps its initialisation
    assert "2 of 3 classes from the file's rows of the same name (floor, wall)" in report.summary()
    assert "new, initialised fresh: robot" in report.summary()
    assert not report.fresh
    # the file's classifier is used (two of its rows), nothing else left over
    assert report.unused == []


def test_the_same_classes_in_another_order_are_matched_by_name(tmp_path):
    source = _model()
    path = _saved(tmp_path, source, NYU_LIKE)
    target = _model(seed=1)
    transfer_weights(target, path, classes=list(reversed(NYU_LIKE)))
    assert torch.equal(target.head.classifier.weight.detach(), source.head.classifier.weight.detach().flip(0))


def test_a_new_sensor_starts_from_the_files_supplementary_sensor(tmp_path):
    source = _model(("rgb", "depth"))
    path = _saved(tmp_path, source, NYU_LIKE)
    target = _model(("rgb", "depth", "thermal"), seed=1)
    report = transfer_weights(target, path, classes=NYU_LIKE)

    theirs, ours = source.state_dict(), target.state_dict()
    depth_keys = [k for k in theirs if k.startswith("encoder.branches.depth.")]
    assert depth_keys
    for key in depth_keys:
        assert torch.equal(ours[key.replace(".depth.", ".thermal.")], theirs[key]), key
        assert torch.equal(ours[key], theirs[key]), key
    assert report.from_modality == {"thermal": "depth"}
    # the branch and the fusion modules' per-sensor parts (CMX's cross attention has one projection per sensor)
    taken = set(report.from_modality_keys)
    assert taken > {k.replace(".depth.", ".thermal.") for k in depth_keys}
    assert all("thermal" in k.split(".") for k in taken)
    assert f"thermal <- the file's depth weights: {len(taken)} tensors" in report.summary()
    # whatever kept its initialisation is named with the reason
    for key, why in report.fresh.items():
        assert why in ("not in the file", "shape differs"), (key, why)
        assert "branches" not in key


def test_an_rgb_only_model_starts_a_depth_stem_with_its_first_convolution_adapted(tmp_path):
    source = _model(("rgb",), fusion="mean")  # e.g. a converted RGB SegFormer
    path = _saved(tmp_path, source, NYU_LIKE)
    target = _model(("rgb", "depth"), fusion="mean", seed=1)
    report = transfer_weights(target, path, classes=NYU_LIKE)
    theirs, ours = source.state_dict(), target.state_dict()
    assert theirs["encoder.stems.rgb.proj.weight"].shape[1] == 3 and ours["encoder.stems.depth.proj.weight"].shape[1] == 1
    # one input channel: the sum of the RGB kernels, as for ImageNet weights
    assert torch.allclose(ours["encoder.stems.depth.proj.weight"],
                          theirs["encoder.stems.rgb.proj.weight"].sum(dim=1, keepdim=True))
    assert report.adapted == ["encoder.stems.depth.proj.weight (3 -> 1 channels)"]
    assert report.from_modality == {"depth": "rgb"}
    assert torch.equal(ours["encoder.stems.depth.norm.weight"], theirs["encoder.stems.rgb.norm.weight"])
    assert not report.fresh and not report.unused


def test_a_dropped_sensor_is_reported_unused(tmp_path):
    source = _model(("rgb", "depth", "thermal"))
    path = _saved(tmp_path, source, NYU_LIKE)
    target = _model(("rgb", "thermal"), seed=1)
    report = transfer_weights(target, path, classes=NYU_LIKE)
    assert report.unused and all(k.startswith("encoder.branches.depth.") or not k.startswith("encoder.branches")
                                 for k in report.unused)
    assert "unused from the file" in report.summary() and "encoder.branches.depth.*" in report.summary()
    assert torch.equal(target.state_dict()["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"],
                       source.state_dict()["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"])


def test_the_sensor_to_start_from_can_be_chosen(tmp_path):
    source = _model(("rgb", "depth", "lidar"))
    path = _saved(tmp_path, source, NYU_LIKE)
    # two supplementary sensors in the file: no default, the new sensor keeps its initialisation
    target = _model(("rgb", "depth", "thermal"), seed=1)
    before = target.state_dict()["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"].clone()
    report = transfer_weights(target, path, classes=NYU_LIKE)
    assert report.from_modality == {}
    assert torch.equal(target.state_dict()["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"], before)
    assert report.fresh["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"] == "not in the file"
    # and the summary says so, with the key that starts it from one of them (was only a line among the fresh ones)
    assert report.unsourced == {"thermal": ["rgb", "depth", "lidar"]}
    assert ("note: thermal is new and the file has several sensors (rgb, depth, lidar): it keeps its own "
            "initialisation; train.init_modality_from={thermal: lidar} starts it") in report.summary()

    target = _model(("rgb", "depth", "thermal"), seed=1)
    report = transfer_weights(target, path, classes=NYU_LIKE, modality_from={"thermal": "lidar"})
    assert report.unsourced == {} and "note: thermal" not in report.summary()
    assert torch.equal(target.state_dict()["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"],
                       source.state_dict()["encoder.branches.lidar.stages.0.blocks.0.attn.q.weight"])

    # or kept as created, where the default would have taken another sensor's weights
    single = _saved(tmp_path, _model(("rgb", "depth")), NYU_LIKE, "single.safetensors")
    target = _model(("rgb", "depth", "thermal"), seed=1)
    report = transfer_weights(target, single, classes=NYU_LIKE, modality_from={"thermal": "none"})
    assert report.from_modality == {} and report.unsourced == {}
    assert torch.equal(target.state_dict()["encoder.branches.thermal.stages.0.blocks.0.attn.q.weight"], before)
    with pytest.raises(ConfigError, match="'depth': none keeps the initialisation of a sensor the file lacks"):
        transfer_weights(_model(("rgb", "depth", "thermal")), single, modality_from={"depth": "none"})

    with pytest.raises(ConfigError, match="the file's model has no 'event'"):
        transfer_weights(_model(("rgb", "depth", "thermal")), path, modality_from={"thermal": "event"})
    with pytest.raises(ConfigError, match="the file already has 'depth' weights"):
        transfer_weights(_model(("rgb", "depth", "thermal")), path, modality_from={"depth": "lidar"})
    with pytest.raises(ConfigError, match="'event' is not a modality of the model"):
        transfer_weights(_model(("rgb", "depth", "thermal")), path, modality_from={"event": "lidar"})


def test_another_backbone_or_fusion_is_refused(tmp_path):
    path = _saved(tmp_path, _model(backbone="mit_b0"), NYU_LIKE)
    with pytest.raises(CheckpointError, match="holds cmx/mit_b0 over rgb\\+depth with 5 classes, but this model's "
                                              "backbone is mit_nano"):
        transfer_weights(_model(), path)
    path = _saved(tmp_path, _model(fusion="mean"), NYU_LIKE, "mean.safetensors")
    with pytest.raises(CheckpointError, match="none of the file's encoder tensors fit cmx/mit_nano"):
        transfer_weights(_model(), path)


def test_a_plain_state_dict_file_is_read_without_unpickling_and_copied_by_position(tmp_path):
    source = _model()
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    target = _model(seed=1)
    report = transfer_weights(target, path, classes=["a", "b", "c", "d", "e"])
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert "5 classes copied by position" in report.classifier
    assert "a state dict without rgbx metadata" in report.summary()

    other = _model(num_classes=3, seed=1)
    before = other.head.classifier.weight.detach().clone()
    report = transfer_weights(other, path)
    assert torch.equal(other.head.classifier.weight.detach(), before)
    assert "5 classes in the file, 3 here, names unknown: initialised fresh" in report.classifier


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="init_from file not found"):
        transfer_weights(_model(), tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        transfer_weights(_model(), bad)


def test_a_safetensors_state_dict_without_rgbx_metadata_is_read(tmp_path):
    from safetensors.torch import save_file

    source = _model()
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = _model(seed=1)
    report = transfer_weights(target, path)
    assert len(report.loaded) == report.total - 2 and "copied by position" in report.classifier
    assert torch.equal(target.head.classifier.weight.detach(), source.head.classifier.weight.detach())


def test_a_file_trained_through_another_input_encoding_is_noted(tmp_path):
    """A converted CMX model saw blue-first RGB; a model started from it that feeds rgbx's RGB is told so."""
    bgr = {"rgb": {"source": [2, 1, 0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    torch.manual_seed(0)
    source = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=5,
                          head_channels=16, input_encoding=bgr)
    path = _saved(tmp_path, source, NYU_LIKE)
    report = transfer_weights(_model(), path, classes=NYU_LIKE)
    assert report.input_encoding == ["rgb: channels [2, 1, 0], (x − [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], "
                                     "x in intensity 0-1; here rgb is fed as rgbx normalises it"]
    assert "another input encoding than this model" in report.summary()
    same = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=5,
                        head_channels=16, input_encoding=bgr)
    assert transfer_weights(same, path, classes=NYU_LIKE).input_encoding == []
    assert transfer_weights(_model(seed=2), _saved(tmp_path, _model(), NYU_LIKE, "plain.safetensors"),
                            classes=NYU_LIKE).input_encoding == []


def test_the_same_encoding_written_otherwise_is_not_noted(tmp_path):
    torch.manual_seed(0)
    spelled = {"depth": {"source": [0], "mean": [1], "std": [2]}}
    source = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=5,
                          head_channels=16, input_encoding=spelled)
    path = _saved(tmp_path, source, NYU_LIKE)
    target = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=5,
                          head_channels=16, input_encoding={"depth": {"mean": [1.0], "std": [2.0]}})
    assert transfer_weights(target, path, classes=NYU_LIKE).input_encoding == []
