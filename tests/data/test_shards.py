"""Packed datasets (tar shards + index): the same samples as the folder, errors that name the member, and training
on them through `data.dataset=shards` (with loader worker processes)."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
import yaml

from rgbx.cli.main import main
from rgbx.data import build_dataset
from rgbx.data.datasets.shards import pack_dataset
from rgbx.engine.config import load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from rgbx.errors import DataError
from tests.conftest import make_dataset


def folder_with_a_missing_sensor(tmp_path):
    root = make_dataset(tmp_path / "rig", n=7, size=(16, 20))
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["modalities"]["thermal"]["optional"] = True
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    (root / "thermal" / "s001.png").unlink()
    return root


@pytest.mark.parametrize("decoded", [False, True])
def test_packed_samples_equal_the_folders(tmp_path, decoded):
    """Packed as the files are, or decoded (``.npy`` members: reading decodes nothing), the samples are the
    folder's, bit for bit."""
    root = folder_with_a_missing_sensor(tmp_path)
    summary = pack_dataset(root, tmp_path / "packed", shard_size=2, decoded=decoded)
    assert summary == {"train": {"samples": 5, "shards": 3}, "val": {"samples": 2, "shards": 1}}
    assert sorted(p.name for p in (tmp_path / "packed" / "shards").glob("*.tar")) == [
        "train-00000.tar", "train-00001.tar", "train-00002.tar", "val-00000.tar"]
    with tarfile.open(tmp_path / "packed" / "shards" / "val-00000.tar") as tar:
        names = tar.getnames()
    assert names and all(n.endswith(".npy") == decoded for n in names), names
    for split in ("train", "val"):
        folder = build_dataset("folder", root, split)
        packed = build_dataset("shards", tmp_path / "packed", split, check="full")
        assert packed.ids == folder.ids
        for i in range(len(folder)):
            a, b = folder.load(i), packed.load(i)
            assert a["meta"] == b["meta"] and torch.equal(a["label"], b["label"])
            assert a["inputs"].keys() == b["inputs"].keys()
            assert all(torch.equal(a["inputs"][k], b["inputs"][k]) for k in a["inputs"])
            # transformed samples too (same per-sample random draws)
            fa, fb = folder[(3, i)], packed[(3, i)]
            assert all(torch.equal(fa["inputs"][k], fb["inputs"][k]) for k in fa["inputs"])
    assert "thermal" not in build_dataset("shards", tmp_path / "packed", "train").load(1)["inputs"]  # s001


def test_damaged_shards_are_named(tmp_path):
    root = make_dataset(tmp_path / "rig", n=4, size=(16, 20))
    out = tmp_path / "packed"
    pack_dataset(root, out, shard_size=10)
    index = json.loads((out / "shards" / "train.json").read_text())
    shard, offset, size, member = index["samples"][0]["files"]["rgb"]
    assert member == "rgb/s000.png"
    tar = out / "shards" / "train-00000.tar"
    data = bytearray(tar.read_bytes())
    data[offset:offset + 16] = b"\0" * 16  # the PNG signature and header gone
    tar.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        build_dataset("shards", out, "train")
    problems = "\n".join(e.value.problems)
    assert "train-00000.tar/rgb/s000.png (sample 's000', rgb): unreadable image" in problems
    assert "the index was edited" not in problems  # the member's bytes are damaged, not the index
    tar.write_bytes(bytes(data[:offset + 10]))  # cut short inside that member
    ds = build_dataset("shards", out, "train", check="none")
    with pytest.raises(DataError, match="ends .* bytes early .a truncated copy of the shard"):
        ds.load(0)
    with pytest.raises(DataError, match="split index not found .*packed splits here: train, val"):
        build_dataset("shards", out, "test")


def test_pack_never_replaces_what_it_did_not_write(tmp_path, capsys):
    root = make_dataset(tmp_path / "rig", n=4, size=(16, 20))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        pack_dataset(root, other)
    with pytest.raises(DataError, match="not a packed dataset"):
        pack_dataset(root, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="another folder than its source"):
        pack_dataset(root, root)
    out = tmp_path / "packed"
    assert main(["data", "pack", str(root), str(out), "--shard-size", "3"]) == 0
    assert "train: 2 samples in 1 shard(s)" in capsys.readouterr().out
    assert main(["data", "pack", str(root), str(out)]) != 0
    assert main(["data", "pack", str(root), str(out), "--overwrite"]) == 0
    assert main(["data", "check", str(out), "--dataset", "shards"]) == 0
    assert main(["data", "pack", str(root), str(out), "--overwrite", "--decoded"]) == 0
    assert main(["data", "check", str(out), "--dataset", "shards"]) == 0
    assert next((out / "shards").glob("*.json")).read_text().count('.npy", "npy"]') > 0


def test_overwrite_replaces_only_what_a_pack_wrote(tmp_path):
    """--overwrite on an earlier pack that also holds the user's own files: the pack's files are replaced (stale
    shards gone), the user's notes and results stay; a source that fails its check leaves the old pack whole."""
    root = make_dataset(tmp_path / "rig", n=4, size=(16, 20))
    out = tmp_path / "packed"
    assert main(["data", "pack", str(root), str(out), "--shard-size", "1"]) == 0
    (out / "README.md").write_text("my notes")
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text('{"miou": 0.5}')
    (out / "shards" / "notes.json").write_text('{"mine": true}')  # not an index: kept too
    assert main(["data", "pack", str(root), str(out), "--shard-size", "10", "--overwrite"]) == 0
    assert (out / "README.md").read_text() == "my notes"
    assert (out / "eval" / "results.json").read_text() == '{"miou": 0.5}'
    assert (out / "shards" / "notes.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["train-00000.tar", "val-00000.tar"]
    assert main(["data", "check", str(out), "--dataset", "shards"]) == 0  # notes.json is not taken for a split
    (out / "shards" / "notes.json").unlink()
    before = sorted(p.name for p in (out / "shards").iterdir())
    (root / "rgb" / "s000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="s000.png"):
        pack_dataset(root, out, overwrite=True)
    assert sorted(p.name for p in (out / "shards").iterdir()) == before


def _edit_train_index(tmp_path, shard_size: int, edit):
    """Pack a toy dataset, then ``edit(samples)`` its train index by hand; (packed folder, index path, sample ids)."""
    out = tmp_path / "packed"
    pack_dataset(make_dataset(tmp_path / "rig", n=4, size=(16, 20)), out, shard_size=shard_size)
    path = out / "shards" / "train.json"
    index = json.loads(path.read_text())
    edit(index["samples"])
    path.write_text(json.dumps(index))
    return out, path, [s["id"] for s in index["samples"]]


def test_broken_index_entries_are_named(tmp_path, capsys):
    """A hand-edited index: a shard number out of range, an entry with missing fields; each named with the index
    file, the sample and the modality, not an IndexError / ValueError."""
    def edit(samples):
        samples[0]["files"]["rgb"][0] = 5
        samples[1]["files"]["depth"] = [0, 0, 10]

    out, path, ids = _edit_train_index(tmp_path, 2, edit)
    with pytest.raises(DataError, match="2 broken index entries") as e:
        build_dataset("shards", out, "train", check="none")
    assert e.value.problems == [
        f"{path}: sample {ids[0]!r}, rgb: shard number 5, but the index lists 1 shard(s), numbered 0 to 0",
        f"{path}: sample {ids[1]!r}, depth: expected an entry [shard number, byte offset, size, member name] "
        f'(+ "npy" for a decoded pack), got [0, 0, 10]']
    assert main(["data", "check", str(out), "--dataset", "shards"]) != 0
    err = capsys.readouterr().err
    assert "shard number 5" in err and "Traceback" not in err


def test_an_index_that_does_not_fit_its_shards_is_named(tmp_path):
    """Edited offsets / sizes: the message names the member, the sample and the modality, says the index may be
    wrong or out of date, and shows no Python object."""
    def edit(samples):
        samples[0]["files"]["depth"][2] = 999999  # size
        samples[1]["files"]["label"][1] = 123  # offset

    out, path, ids = _edit_train_index(tmp_path, 10, edit)
    with pytest.raises(DataError) as e:
        build_dataset("shards", out, "train")
    problems = "\n".join(e.value.problems)
    assert f"train-00000.tar/depth/{ids[0]}.png (sample {ids[0]!r}, depth): the shard ends" in problems
    # offset 123: no tar header before it (the header is checked before the bytes are decoded)
    assert f"train-00000.tar/label/{ids[1]}.png (sample {ids[1]!r}, label): no tar header precedes offset 123" \
        in problems
    assert problems.count("the index was edited or is out of date") == 2
    assert "BytesIO" not in problems and " object at 0x" not in problems


@pytest.mark.parametrize("decoded", [True, False])
def test_swapped_or_foreign_shards_are_refused(tmp_path, capsys, decoded):
    """Shards swapped with each other, or an index copied from another pack of the same layout: in a decoded pack
    every member of a kind has the same size, so only the member's name in the tar header tells them apart. Each
    read compares it with the index's, and `rgbx data check` names the shard, the member and what was there."""
    root = make_dataset(tmp_path / "rig", n=8, size=(16, 20))  # train: 6 samples, in 2 shards of 3
    out = tmp_path / "packed"
    pack_dataset(root, out, shard_size=3, decoded=decoded)
    shards = out / "shards"
    first, second = shards / "train-00000.tar", shards / "train-00001.tar"
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)
    ids = build_dataset("shards", out, "train", check="none").ids
    assert main(["data", "check", str(out), "--dataset", "shards"]) != 0
    err = capsys.readouterr().err
    suffix = ".npy" if decoded else ""
    assert (f"train-00000.tar/rgb/{ids[0]}.png{suffix} (sample {ids[0]!r}, rgb): the shard holds the member "
            f"'rgb/{ids[3]}.png{suffix}'") in err, err
    assert f"where the index expects 'rgb/{ids[0]}.png{suffix}'" in err and "does not belong with this index" in err
    ds = build_dataset("shards", out, "train", check="none")
    with pytest.raises(DataError, match="does not belong with this index"):
        ds.load(0)  # never another sample's pixels
    first.write_bytes(a), second.write_bytes(b)
    assert torch.equal(build_dataset("shards", out, "train").load(0)["label"],
                       build_dataset("folder", root, "train").load(0)["label"])

    # an index from another pack of the same layout (the same files, the samples in another order), over these shards
    other = make_dataset(tmp_path / "other", n=8, size=(16, 20),
                         splits={"train": [f"s{i:03d}" for i in range(5, -1, -1)], "val": ["s006", "s007"]})
    pack_dataset(other, tmp_path / "packed_other", shard_size=3, decoded=decoded)
    (shards / "train.json").write_bytes((tmp_path / "packed_other" / "shards" / "train.json").read_bytes())
    assert main(["data", "check", str(out), "--dataset", "shards"]) != 0
    assert "does not belong with this index" in capsys.readouterr().err


@pytest.mark.parametrize("decoded", [False, True])
def test_training_reads_the_shards_in_loader_processes(tmp_path, decoded):
    root = make_dataset(tmp_path / "rig", n=6, size=(16, 20))
    pack_dataset(root, tmp_path / "packed", shard_size=4, decoded=decoded)
    cfg = load_config(None, [f"data.root={tmp_path / 'packed'}", "data.dataset=shards",
                             f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano", "model.head_channels=16",
                             "data.crop_size=[16,16]", "data.num_workers=1", "train.batch_size=2", "train.iters=3",
                             "train.eval_every=0", "train.device=cpu", "model.modalities=[rgb,depth,thermal]"])
    metrics = Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    assert 0.0 <= metrics["subsets"]["rgb+depth+thermal"]["all"]["miou"] <= 1.0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_opening_a_decoded_pack_reads_only_the_array_headers(tmp_path, monkeypatch):
    """Opening checks every file's header; for a decoded pack that must not read every array."""
    from rgbx.data.datasets.shards import ShardedDataset

    root = make_dataset(tmp_path / "rig", n=4, size=(16, 20))
    pack_dataset(root, tmp_path / "packed", decoded=True)
    folder = build_dataset("folder", root, "train")

    def no_full_reads(self, path, encoding):
        raise AssertionError(f"read all of {path}")

    with monkeypatch.context() as m:
        m.setattr(ShardedDataset, "read_file", no_full_reads)
        packed = build_dataset("shards", tmp_path / "packed", "train", check="headers")
        info = packed.probe_path(packed.files(packed.ids[0])["rgb"], "png")
    assert (info.channels, info.dtype, info.size) == (3, "uint8", (16, 20))
    assert torch.equal(packed.load(0)["inputs"]["rgb"], folder.load(0)["inputs"]["rgb"])
