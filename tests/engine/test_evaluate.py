"""Scoring sensor sets over a dataset where a sensor is missing from some samples."""

from __future__ import annotations

import pytest
import torch
import yaml

from rgbx.data import FolderDataset, collate
from rgbx.data.transforms import EvalTransform
from rgbx.engine.evaluate import all_subsets, evaluate
from rgbx.engine.robustness import entire_missing_table, robustness_report
from rgbx.engine.tables import anymodal_table
from rgbx.models import create_model
from tests.conftest import make_dataset


@pytest.fixture
def thermal_missing_once(tmp_path):
    """Five validation samples; s006 has no thermal file (thermal declared optional)."""
    root = make_dataset(tmp_path / "data", n=9, size=(16, 20), modalities=("rgb", "thermal"))
    described = yaml.safe_load((root / "dataset.yaml").read_text())
    described["modalities"]["thermal"]["optional"] = True
    (root / "dataset.yaml").write_text(yaml.safe_dump(described))
    (root / "thermal" / "s006.png").unlink()
    (root / "splits" / "val.txt").write_text("s004\ns005\ns006\ns007\ns008\n")
    return root


def model():
    torch.manual_seed(0)
    return create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "thermal"], num_classes=3,
                        head_channels=16).eval()


def loader(root, batch_size):
    ds = FolderDataset(root, "val", transform=EvalTransform())
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)


def test_a_sample_without_the_subsets_sensors_is_never_scored_whatever_its_batch(thermal_missing_once):
    """`--modalities thermal` gave another mIoU at --batch-size 1 than at 3: a sample without thermal was skipped
    when alone in its batch and scored from no sensor at all when another sample of the batch had thermal."""
    net = model()
    results = [evaluate(net, loader(thermal_missing_once, b), num_classes=3, subsets=all_subsets(net.modalities))
               for b in (1, 3, 5)]
    for result in results:
        assert result.unscored == {"thermal": 1}
        assert result.to_dict()["unscored_samples"] == {"thermal": 1}
        thermal = result.matrices["thermal"]["all"].matrix
        assert int(thermal.sum()) == 4 * 16 * 20 - 4  # four samples, one ignored pixel each
        for subset in ("rgb", "rgb+thermal"):
            assert int(result.matrices[subset]["all"].matrix.sum()) == 5 * 16 * 20 - 5
    for result in results[1:]:
        for subset in results[0].matrices:
            assert torch.equal(result.matrices[subset]["all"].matrix, results[0].matrices[subset]["all"].matrix)
    caption = str(anymodal_table(results[1]).caption)
    assert "samples with none of a row's sensors, not scored in that row: thermal 1" in caption


def test_robustness_entire_missing_rows_leave_out_the_same_samples(thermal_missing_once):
    """Also: a batch in which no sample has thermal (batch size 1) reached the silent-failure checks, which read every
    sensor's tensor ('KeyError: thermal')."""
    net = model()
    reports = [robustness_report(net, loader(thermal_missing_once, b), num_classes=3, corruptions=("dropout",),
                                 strengths={"dropout": (0.5,)}) for b in (1, 3)]
    for report in reports:
        assert report["entire_missing"]["unscored_samples"] == {"thermal": 1}
    assert reports[0] == reports[1]  # the whole report: rows, corruptions, silent failures
    assert "not scored in that row: thermal 1" in str(entire_missing_table(reports[1]).caption)


def test_robustness_frozen_detection_counts_only_frames_with_a_predecessor_that_has_the_sensor(thermal_missing_once):
    """A frozen sensor re-sends its previous frame; after a sample without thermal there is none to re-send. Such
    frames were counted: in loader order the absent sample's fill value was re-sent and 'caught' (3 of 4), with the
    dataset's predecessors they stayed unchanged and 'missed' (2 of 4). Now they are left out of the rate, as the
    first sample is: 2 of 2 either way (s005 and s008; s004 is first, s007 follows s006 without thermal)."""
    from rgbx.cli.evaluate import _previous_in

    net = model()
    ds = FolderDataset(thermal_missing_once, "val", transform=EvalTransform())
    reports = [robustness_report(net, loader(thermal_missing_once, b), num_classes=3, corruptions=(),
                                 failures=("frozen",), previous=given)
               for b in (1, 3) for given in (None, _previous_in(ds))]
    for report in reports:
        results = report["silent_failures"]["results"]
        assert results["thermal"]["frozen"]["detected"] == 1.0
        assert results["rgb"]["frozen"]["detected"] == 1.0
    assert all(r["silent_failures"] == reports[0]["silent_failures"] for r in reports[1:])


def test_robustness_with_a_sensor_missing_from_the_whole_split(thermal_missing_once):
    """An optional sensor no sample of the split has: its row has no scored sample, and --robustness crashed with
    KeyError 'thermal' in the expected mIoU. The rows that exist are reported; average and expected are none (not a
    figure over fewer subsets), and the table says why."""
    from rich.console import Console

    from rgbx.engine.robustness import expected_miou

    for path in (thermal_missing_once / "thermal").iterdir():
        path.unlink()
    report = robustness_report(model(), loader(thermal_missing_once, 2), num_classes=3, corruptions=(),
                               failures=("blank",))
    em = report["entire_missing"]
    assert set(em["subsets"]) == {"rgb+thermal", "rgb"} and em["unscored_subsets"] == ["thermal"]
    assert em["average"] is None and em["expected"] == {}
    console = Console(width=200, record=True)
    console.print(entire_missing_table(report))
    assert "no sample had the sensors of thermal" in console.export_text()
    with pytest.raises(ValueError, match="missing: thermal"):
        expected_miou({"rgb+thermal": 0.5, "rgb": 0.4}, ["rgb", "thermal"], 0.1)
