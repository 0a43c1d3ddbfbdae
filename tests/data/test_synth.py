"""Tests of the built-in procedural dataset (rgbx.data.synth); tiny images so that the file runs in seconds."""

from __future__ import annotations

import csv
import filecmp
from pathlib import Path

import numpy as np
import pytest
import yaml

from rgbx.data.synth import (
    CLASSES,
    CONDITIONS,
    MODALITIES,
    PALETTE,
    generate,
    render_sample,
    sample_index,
)
from rgbx.data.synth.render import render
from rgbx.data.synth.scene import make_scene
from rgbx.errors import RgbxError
from rgbx.modalities.encodings import read_array

SIZE = (48, 64)
EXPECTED = {
    "rgb": ((3, *SIZE), np.uint8),
    "depth": ((1, *SIZE), np.uint16),
    "thermal": ((1, *SIZE), np.uint8),
    "lidar": ((1, *SIZE), np.uint16),
    "event": ((2, *SIZE), np.uint8),
    "label": (SIZE, np.uint8),
}


def test_public_constants():
    assert MODALITIES == ("rgb", "depth", "thermal", "lidar", "event")
    assert 8 <= len(CLASSES) <= 11 and len(set(CLASSES)) == len(CLASSES)
    assert len(PALETTE) == len(CLASSES) and all(
        len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE
    )
    assert {"person", "mannequin", "car", "crate", "painting", "pole", "sky"} <= set(CLASSES)
    assert set(CONDITIONS) == {"day", "night", "fog", "glare", "motion_blur"}


def test_shapes_dtypes_and_labels():
    for index in range(4):
        s = render_sample(0, index, SIZE)
        for key, (shape, dtype) in EXPECTED.items():
            assert s[key].shape == shape, key
            assert s[key].dtype == dtype, key
        assert s["condition"] in CONDITIONS
        labels = s["label"]
        assert np.all((labels < len(CLASSES)) | (labels == 255))
        assert (labels == 255).mean() < 0.05  # ignore is rare
        assert len(np.unique(labels)) >= 3
        # sky has neither depth nor LiDAR
        sky = labels == CLASSES.index("sky")
        assert not s["depth"][0][sky].any() and not s["lidar"][0][sky].any()


def test_deterministic_by_seed_and_index():
    a = render_sample(7, 3, SIZE)
    b = render_sample(7, 3, SIZE)
    for key in EXPECTED:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["condition"] == b["condition"]
    for other in (render_sample(7, 4, SIZE), render_sample(8, 3, SIZE)):
        assert not np.array_equal(a["rgb"], other["rgb"])
        assert not np.array_equal(a["label"], other["label"])


def test_condition_changes_only_rgb_and_events():
    day = render_sample(1, 2, SIZE, condition="day")
    fog = render_sample(1, 2, SIZE, condition="fog")
    for key in ("depth", "thermal", "lidar", "label"):
        np.testing.assert_array_equal(day[key], fog[key])
    assert day["condition"] == "day" and fog["condition"] == "fog"
    assert not np.array_equal(day["rgb"], fog["rgb"])


def test_night_rgb_is_dark_but_events_keep_the_geometry():
    for index in range(3):
        day = render_sample(5, index, (96, 128), condition="day")
        night = render_sample(5, index, (96, 128), condition="night")
        assert night["rgb"].mean() < 0.3 * day["rgb"].mean()
        assert night["rgb"].mean() < 30
        # event cameras have a high dynamic range: the night event map matches the day one, the RGB does not
        ed, en = (s["event"].sum(0).astype(float).ravel() for s in (day, night))
        rd, rn = (s["rgb"].astype(float).mean(0).ravel() for s in (day, night))
        assert np.corrcoef(ed, en)[0, 1] > 0.5
        assert np.corrcoef(rd, rn)[0, 1] < 0.5


def test_glare_saturates_and_fog_hides_far_things():
    glare = render_sample(2, 0, (96, 128), condition="glare")
    assert (glare["rgb"].min(0) >= 250).mean() > 0.2
    checked = 0
    for index in range(6):
        day = render_sample(2, index, (96, 128), condition="day")
        fog = render_sample(2, index, (96, 128), condition="fog")
        # far things: LiDAR range beyond 30 m, or sky
        far = (day["lidar"][0] > 30_000) | (day["label"] == CLASSES.index("sky"))
        if far.sum() < 30:
            continue
        checked += 1
        assert fog["rgb"][:, far].astype(float).std() < 0.5 * day["rgb"][:, far].astype(float).std()
        # near things keep some contrast
        near = (day["depth"][0] > 0) & (day["depth"][0] < 6000)
        if near.sum() > 30:
            assert fog["rgb"][:, near].astype(float).std() > 2.0
    assert checked >= 2


def test_lidar_is_sparse_rows_of_points():
    for index in range(4):
        lidar = render_sample(0, index, (120, 160))["lidar"][0]
        hit = lidar > 0
        assert 0.005 < hit.mean() < 0.15
        # a point every few pixels along a row: horizontal neighbours are (almost) never both hit
        assert (hit[:, 1:] & hit[:, :-1]).sum() < 0.05 * hit.sum()
        # metric ranges that agree with the depth camera: range = depth / cos(angle off the optical axis)
        depth = render_sample(0, index, (120, 160))["depth"][0].astype(float)
        both = hit & (depth > 0) & (depth < 20_000)
        assert both.sum() > 50
        ratio = lidar[both] / depth[both]
        assert np.mean((ratio > 0.95) & (ratio < 1.6)) > 0.9


def test_far_lidar_returns_are_dropped_not_clipped():
    # uint16 millimetres hold at most 65.535 m; the beams reach 80-120 m: farther returns must be 0 (no return),
    # never a clipped 65535 that reads as a real range
    far_geometry = near_limit = 0
    for index in range(10):
        s = render_sample(0, index, (120, 160), condition="day")
        lidar, depth = s["lidar"][0], s["depth"][0]
        assert lidar.max() <= 65534 and not (lidar == 65535).any()
        # depth is cut at 30-45 m, well inside uint16: no clipped value either
        assert depth.max() <= 45_000 and not (depth == 65535).any()
        scene = make_scene(np.random.default_rng(np.random.SeedSequence([0, index]).spawn(7)[0]), 120, 160)
        dist = render(scene, scene.camera, scene.prims, with_temp=False).dist
        far = np.isfinite(dist) & (dist > 65.6)  # beyond the encoding even after the 2 cm range noise
        far_geometry += far.sum()
        assert not lidar[far].any()
        near_limit += ((lidar > 55_000) & (lidar <= 65534)).sum()
    assert far_geometry > 1000  # the check above is not vacuous
    assert near_limit > 50  # returns up to the encoding's limit are kept


def test_fog_wipes_out_most_events():
    day_frac, fog_frac = [], []
    for index in range(3):
        day = render_sample(0, index, (96, 128), condition="day")["event"].sum(0) > 0
        fog = render_sample(0, index, (96, 128), condition="fog")["event"].sum(0) > 0
        day_frac.append(day.mean())
        fog_frac.append(fog.mean())
    assert np.mean(fog_frac) < 0.25 * np.mean(day_frac)


def test_depth_has_holes_and_metric_values():
    s = render_sample(0, 1, (96, 128))
    depth = s["depth"][0]
    ground = s["label"] == CLASSES.index("ground")
    assert 0.02 < (depth[ground] == 0).mean() < 0.8
    assert depth.max() <= 45_000  # far range is invalid
    # the ground gets further away towards the horizon: bottom rows are nearer than rows above them
    rows = [
        np.median(depth[r][ground[r] & (depth[r] > 0)])
        for r in (95, 70)
        if (ground[r] & (depth[r] > 0)).any()
    ]
    assert len(rows) == 2 and rows[0] < rows[1]


def test_thermal_tells_person_from_mannequin():
    person, mannequin = CLASSES.index("person"), CLASSES.index("mannequin")
    hot, cold = [], []
    for index in range(12):
        s = render_sample(3, index, (60, 80))
        thermal = s["thermal"][0].astype(float)
        hot.append(thermal[s["label"] == person])
        cold.append(thermal[s["label"] == mannequin])
    hot, cold = np.concatenate(hot), np.concatenate(cold)
    assert hot.size > 50 and cold.size > 50
    assert hot.mean() > cold.mean() + 20


def test_paintings_are_flat_ground():
    """A painting pixel is a ground pixel in the geometry (the ground primitive is what the ray hits)."""
    found = 0
    for index in range(8):
        rng = np.random.default_rng([11, index])
        scene = make_scene(rng, 60, 80)
        frame = render(scene, scene.camera, scene.prims)
        painted = frame.label == CLASSES.index("painting")
        if painted.any():
            found += 1
            assert np.all(frame.prim[painted] == 0)  # prims[0] is the ground plane
            np.testing.assert_allclose(frame.normal[painted], np.broadcast_to([0, 1, 0], (painted.sum(), 3)))
            # ... but it looks like something else: its shading normals are not all the ground's
            assert not np.allclose(frame.shading_normal[painted], frame.normal[painted])
    assert found >= 2


def test_argument_validation():
    with pytest.raises(RgbxError, match="unknown condition"):
        render_sample(0, 0, SIZE, condition="rain")
    with pytest.raises(RgbxError, match="positive"):
        render_sample(0, 0, (0, 64))
    with pytest.raises(RgbxError, match="seed"):
        render_sample(-1, 0, SIZE)


def test_conditions_restrict_the_draw():
    drawn = {render_sample(0, i, (16, 16), conditions=["fog", "night"])["condition"] for i in range(12)}
    assert drawn == {"fog", "night"}
    # the order of the names does not matter
    a = render_sample(0, 5, (16, 16), conditions=["night", "fog"])
    b = render_sample(0, 5, (16, 16), conditions=("fog", "night"))
    assert a["condition"] == b["condition"]
    np.testing.assert_array_equal(a["rgb"], b["rgb"])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_generate_writes_the_dataset_format(tmp_path):
    calls = []
    out = generate(
        tmp_path / "ds",
        splits={"train": 4, "val": 2, "test": 1},
        size=(32, 48),
        seed=3,
        workers=1,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert out == tmp_path / "ds"
    assert calls[-1] == (7, 7) and len(calls) == 7

    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["name"] == "rgbx-synth"
    assert meta["classes"] == CLASSES
    assert meta["palette"] == [list(c) for c in PALETTE]
    assert meta["ignore_index"] == 255
    assert set(meta["modalities"]) == set(MODALITIES)
    assert meta["modalities"]["depth"] == {"encoding": "png", "scale": 0.001}
    assert meta["modalities"]["lidar"]["scale"] == 0.001
    assert meta["modalities"]["event"]["scale"] == 1.0
    assert meta["modalities"]["rgb"]["scale"] == pytest.approx(1 / 255)
    assert meta["modalities"]["thermal"]["scale"] == pytest.approx(1 / 255)
    assert meta["synth"]["seed"] == 3 and meta["synth"]["size"] == [32, 48]

    ids = {}
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        ids[split] = (out / "splits" / f"{split}.txt").read_text().split()
        assert ids[split] == [f"{split}_{i:06d}" for i in range(n)]
    with open(out / "attributes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ids["train"] + ids["val"] + ids["test"]
    assert all(r["condition"] in CONDITIONS for r in rows)

    channels = {"rgb": 3, "depth": 1, "thermal": 1, "lidar": 1, "event": 2, "label": 1}
    dtypes = {"depth": np.uint16, "lidar": np.uint16}
    for sid in ids["train"] + ids["val"] + ids["test"]:
        for folder, c in channels.items():
            arr = read_array(out / folder / f"{sid}.png")
            assert arr.shape == (c, 32, 48), (folder, sid)
            assert arr.dtype == dtypes.get(folder, np.uint8), (folder, sid)
    # files hold exactly what render_sample returns, with the split's own sample index
    sample = render_sample(3, sample_index("val", 1), (32, 48))
    assert sample["condition"] == rows[5]["condition"]
    for m in MODALITIES:
        np.testing.assert_array_equal(read_array(out / m / "val_000001.png"), sample[m])
    np.testing.assert_array_equal(read_array(out / "label" / "val_000001.png")[0], sample["label"])
    # splits use disjoint scenes
    assert not np.array_equal(
        read_array(out / "rgb" / "train_000000.png"), read_array(out / "rgb" / "val_000000.png")
    )


def test_generate_is_reproducible_and_overwrites_its_own_output(tmp_path):
    kwargs = dict(splits={"train": 3, "val": 2}, size=(24, 32), seed=5)
    a = generate(tmp_path / "a", workers=1, **kwargs)
    b = generate(tmp_path / "b", workers=2, **kwargs)  # the worker count does not matter
    files = _files(a)
    # yaml + csv, 2 split files, 5 samples × 6 images
    assert files == _files(b) and len(files) == 2 + 2 + 5 * 6
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    # writing again into an earlier synth output is refused without overwrite, nothing touched
    before = {f: (tmp_path / "b" / f).read_bytes() for f in files}
    with pytest.raises(RgbxError, match="holds an earlier rgbx-synth output.*--overwrite"):
        generate(tmp_path / "b", splits={"train": 1}, size=(24, 32), seed=5, workers=1)
    assert {f: (tmp_path / "b" / f).read_bytes() for f in files} == before
    # with overwrite it replaces it (stale files from larger splits and synthesize's backup disappear)
    (tmp_path / "b" / "dataset.yaml.orig").write_text("the dataset.yaml replaced by rgbx data synthesize")
    generate(tmp_path / "b", splits={"train": 1}, size=(24, 32), seed=5, workers=1, overwrite=True)
    assert not (tmp_path / "b" / "splits" / "val.txt").exists()
    assert _files(tmp_path / "b") == sorted(
        ["attributes.csv", "dataset.yaml", "splits/train.txt", "label/train_000000.png"]
        + [f"{m}/train_000000.png" for m in MODALITIES]
    )
    assert filecmp.cmp(
        a / "rgb" / "train_000000.png", tmp_path / "b" / "rgb" / "train_000000.png", shallow=False
    )


def test_generate_validates_arguments(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RgbxError, match="not empty"):
        generate(foreign, splits={"train": 1}, size=(16, 16), workers=1)
    assert (foreign / "notes.txt").read_text() == "mine"
    bad = [
        dict(conditions=["day", "snow"]),
        dict(size=(16, -1)),
        dict(size=(16,)),
        dict(splits={}),
        dict(splits={"train": -1}),
        dict(splits={"../x": 1}),
        dict(workers=0),
        dict(seed=-2),
    ]
    for kwargs in bad:
        args = dict(splits={"train": 1}, size=(16, 16), workers=1) | kwargs
        with pytest.raises(RgbxError):
            generate(tmp_path / "new", **args)
    assert not (tmp_path / "new").exists()
    out = generate(tmp_path / "fog", splits={"train": 3}, size=(16, 16), workers=1, conditions=["fog"])
    with open(out / "attributes.csv", newline="") as fh:
        assert {r["condition"] for r in csv.DictReader(fh)} == {"fog"}


def test_cli_synth_refuses_an_earlier_output_without_overwrite(tmp_path, capsys):
    from rgbx.cli.main import main

    out = tmp_path / "sy"
    args = ["synth", str(out), "--train", "2", "--val", "1", "--test", "1", "--size", "16x16", "--workers", "1"]
    assert main(args) == 0
    with open(out / "dataset.yaml", "a") as fh:
        fh.write("# my hand edit\n")
    (out / "notes.txt").write_text("mine")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds an earlier rgbx-synth output" in err and "--overwrite" in err and "Traceback" not in err
    assert "# my hand edit" in (out / "dataset.yaml").read_text()
    assert (out / "splits" / "train.txt").read_text().split() == ["train_000000", "train_000001"]
    assert main([*args[:3], "1", *args[4:], "--overwrite"]) == 0
    assert "# my hand edit" not in (out / "dataset.yaml").read_text()
    assert (out / "splits" / "train.txt").read_text().split() == ["train_000000"]
    assert (out / "notes.txt").read_text() == "mine"  # not part of the output: kept


def test_cli_synth_needs_a_train_split_and_leaves_empty_splits_out(tmp_path, capsys):
    from rgbx.cli.main import main

    for bad in (["--train", "0"], ["--train", "-1"], ["--val", "-1"], ["--test", "-2"]):
        with pytest.raises(SystemExit) as e:
            main(["synth", str(tmp_path / "x"), *bad, "--size", "16x16", "--workers", "1"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {bad[0]}: expected a whole number >= {1 if bad[0] == '--train' else 0}" in err, err
    assert not (tmp_path / "x").exists()
    out = tmp_path / "no_val"
    assert main(["synth", str(out), "--train", "2", "--val", "0", "--test", "1", "--size", "16x16",
                 "--workers", "1"]) == 0
    assert sorted(p.name for p in (out / "splits").iterdir()) == ["test.txt", "train.txt"]
    assert main(["data", "check", str(out)]) == 0
