"""``rgbx eval --as-published``: the evaluation protocol ``rgbx convert`` records in a file, applied as if its flags
were typed: the same figures as the flags themselves, conflicts refused, and the protocol kept through export."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from rgbx.cli.evaluate import _add_arguments, published_flags
from rgbx.cli.main import main
from rgbx.engine.checkpoint import save_model
from rgbx.models import create_model
from rgbx.models.convert import REFERENCE_EVALUATION
from tests.conftest import make_dataset

CLASSES = {"name": "toy", "classes": ["ground", "box", "person"], "ignore_index": 255}
# CMX's protocol with a window the size of the toy images (CMX's own is 480x640)
PROTOCOL = {"what": "CMX-like, small window",
            "flags": "--split test --miou all  [--scales 0.75 1 1.25 --flip --scale-rule cmx --window 24x32]"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).eval()
    folder = tmp_path_factory.mktemp("published")
    converted = save_model(folder / "converted.safetensors", model, CLASSES, reference_evaluation=PROTOCOL,
                           converted_from={"file": "cmx.pth", "layout": "cmx"})
    plain = save_model(folder / "plain.safetensors", model, CLASSES)
    ids = [f"s{i:03d}" for i in range(5)]
    data = make_dataset(folder / "data", n=5, size=(24, 32), modalities=("rgb", "depth"),
                        splits={"val": ids[:2], "test": ids[2:]})
    return converted, plain, data


def report(path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("key", sorted(REFERENCE_EVALUATION))
def test_every_recorded_protocol_is_valid_rgbx_eval_flags(key):
    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    flags = REFERENCE_EVALUATION[key][1]
    single = published_flags(flags, multi_scale=False)
    args = parser.parse_args(["m.safetensors", "--data", "d", *single])
    assert "--scales" not in single and args.scales == [1.0] and not args.flip
    multi = published_flags(flags, multi_scale=True)
    if "[--" in flags:
        args = parser.parse_args(["m.safetensors", "--data", "d", *multi])
        assert len(args.scales) > 1 and args.flip and args.scale_rule in ("cmx", "dformer")
        assert multi[: len(single)] == single
    else:
        assert multi is None


def test_as_published_scores_as_the_recorded_flags_do(files, tmp_path, capsys):
    converted, _, data = files
    common = ["eval", str(converted), "--data", str(data), "--json"]
    assert main([*common, str(tmp_path / "single.json"), "--as-published"]) == 0
    assert "as published (CMX-like, small window): --split test --miou all" in capsys.readouterr().out
    assert main([*common, str(tmp_path / "multi.json"), "--as-published", "multi-scale"]) == 0
    assert main([*common, str(tmp_path / "typed.json"), "--split", "test", "--miou", "all", "--scales", "0.75", "1",
                 "1.25", "--flip", "--scale-rule", "cmx", "--window", "24x32"]) == 0
    single, multi, typed = (report(tmp_path / f"{n}.json") for n in ("single", "multi", "typed"))
    assert single["split"] == "test" and single["test_time"]["scales"] == [1.0] and not single["test_time"]["flip"]
    assert single["as_published"] == ["--split", "test", "--miou", "all"]
    assert multi["test_time"] == {"scales": [0.75, 1.0, 1.25], "flip": True, "scale_rule": "cmx", "window": [24, 32],
                                  "stride": multi["test_time"]["stride"]}
    assert multi["subsets"] == typed["subsets"]  # the same matrices as the flags typed out
    assert single["subsets"]["rgb+depth"]["all"]["pixels"] == 3 * 24 * 32 - 3  # the test split, one ignored each


def test_a_flag_given_twice_must_agree(files, capsys):
    converted, _, data = files
    # the same value as the protocol: accepted
    assert main(["eval", str(converted), "--data", str(data), "--as-published", "--split", "test"]) == 0
    capsys.readouterr()
    assert main(["eval", str(converted), "--data", str(data), "--as-published", "--split", "val"]) == 2
    assert "--as-published sets --split test; the command line gives --split val: drop one" in capsys.readouterr().err
    assert main(["eval", str(converted), "--data", str(data), "--as-published", "multi-scale", "--window",
                 "16x16"]) == 2
    assert "sets --window 24x32; the command line gives --window 16x16" in capsys.readouterr().err
    # what the protocol leaves at rgbx eval's default is fixed too (a typed --flip was scored without a word)
    assert main(["eval", str(converted), "--data", str(data), "--as-published", "--flip"]) == 2
    assert "--as-published keeps no --flip (the protocol's); the command line gives --flip: drop one" \
        in capsys.readouterr().err
    assert main(["eval", str(converted), "--data", str(data), "--as-published", "--scale-rule", "dformer"]) == 2
    assert "keeps --scale-rule rgbx (the protocol's); the command line gives --scale-rule dformer" \
        in capsys.readouterr().err


def test_a_file_without_a_protocol_or_a_multi_scale_variant_is_refused(files, tmp_path, capsys):
    converted, plain, data = files
    assert main(["eval", str(plain), "--data", str(data), "--as-published"]) == 2
    assert f"{plain} records no published evaluation protocol" in capsys.readouterr().err
    one_scale = save_model(tmp_path / "cmnext.safetensors", create_model(
        backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=3, head_channels=16), CLASSES,
        reference_evaluation={"what": "one scale", "flags": REFERENCE_EVALUATION["cmnext"][1]})
    assert main(["eval", str(one_scale), "--data", str(data), "--as-published", "multi-scale"]) == 2
    assert "has no multi-scale variant" in capsys.readouterr().err


def test_the_protocol_travels_into_the_exported_file(files, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    converted, _, data = files
    out = tmp_path / "converted.onnx"
    assert main(["export", str(converted), "--out", str(out), "--size", "24x32", "--exporter", "torchscript"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "converted from cmx.pth (cmx layout)" in text and "--as-published, which adds --split test" in text
    assert main(["eval", str(out), "--data", str(data), "--as-published", "multi-scale", "--json",
                 str(tmp_path / "onnx.json")]) == 0
    assert main(["eval", str(converted), "--data", str(data), "--as-published", "multi-scale", "--json",
                 str(tmp_path / "torch.json")]) == 0
    onnx_run, torch_run = (report(tmp_path / f"{n}.json") for n in ("onnx", "torch"))
    assert onnx_run["test_time"]["scale_rule"] == "cmx" and onnx_run["split"] == "test"
    assert onnx_run["subsets"]["rgb+depth"]["all"]["miou"] == pytest.approx(
        torch_run["subsets"]["rgb+depth"]["all"]["miou"], abs=2e-3)
