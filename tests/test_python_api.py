"""The Python API of training and evaluation (rgbx.train, rgbx.evaluate, rgbx.load_config): the same runs and
figures as the command line."""

from __future__ import annotations

import json
import re

import pytest
import torch

import rgbx
from rgbx.cli.main import main
from rgbx.errors import ConfigError
from tests.conftest import make_dataset


def test_train_and_evaluate_from_python_match_the_command_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=8, size=(32, 32), modalities=("rgb", "depth"))
    overrides = [f"data.root={data}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano",
                 "model.head_channels=16", "model.modalities=[rgb,depth]", "train.iters=3", "train.batch_size=2",
                 "train.eval_every=0", "data.crop_size=[32,32]", "data.num_workers=0", "train.eval_group_by=null"]
    metrics = rgbx.train("synth_cmx_b0", overrides)
    assert "miou" in json.dumps(metrics)
    model_file = tmp_path / "run" / "model.safetensors"
    assert model_file.is_file()
    with pytest.raises(rgbx.errors.RgbxError, match="already holds a training run"):
        rgbx.train("synth_cmx_b0", overrides)
    # the training state pruned (disk space, an incomplete copy): the trained files are still not overwritten
    trained = model_file.read_bytes()
    state = tmp_path / "run" / "checkpoints" / "last.state.pt"
    state.rename(tmp_path / "state.pt")
    for resume in (False, True):
        with pytest.raises(rgbx.errors.RgbxError, match=r"holds trained model files \(model.safetensors"):
            rgbx.train("synth_cmx_b0", overrides, resume=resume)
    assert model_file.read_bytes() == trained
    (tmp_path / "state.pt").rename(state)
    # resumed with a schedule shorter than the run already trained: nothing would run, yet 'done' was printed
    with pytest.raises(rgbx.errors.CheckpointError, match=r"the run is at iteration 3, past train.iters=2; resume "
                                                          r"with train.iters of at least that"):
        rgbx.train("synth_cmx_b0", [*overrides, "train.iters=2"], resume=True)

    result = rgbx.evaluate(model_file, data, "val", anymodal=True, group_by="condition", batch_size=1)
    assert sorted(result.matrices) == ["depth", "rgb", "rgb+depth"]
    assert main(["eval", str(model_file), "--data", str(data), "--split", "val", "--anymodal",
                 "--json", str(tmp_path / "e.json")]) == 0
    capsys.readouterr()
    cli = json.loads((tmp_path / "e.json").read_text())["subsets"]
    for subset in ("rgb+depth", "rgb", "depth"):
        assert result.miou(subset) == pytest.approx(cli[subset]["all"]["miou"], abs=1e-9)
        for group in ("condition=day", "condition=night"):
            assert result.miou(subset, group) == pytest.approx(cli[subset][group]["miou"], abs=1e-9)
    assert result.miou() == result.miou("rgb+depth")
    # a model object works too, and test-time options reach the evaluation
    model, _ = rgbx.load_model(model_file)
    flipped = rgbx.evaluate(model, data, "val", scales=(1.0,), flip=True)
    assert list(flipped.matrices) == ["rgb+depth"]
    with pytest.raises(KeyError, match="no result for sensor set 'thermal'"):
        result.miou("thermal")

    # a config object, e.g. edited in a notebook
    cfg = rgbx.load_config("synth_cmx_b0", [*overrides, f"output_dir={tmp_path / 'run2'}"])
    cfg.train.iters = 2
    threads = torch.get_num_threads()
    cfg.train.threads = threads + 1  # for the run only: the caller's thread count is back afterwards
    rgbx.train(cfg)
    assert (tmp_path / "run2" / "model.safetensors").is_file()
    assert torch.get_num_threads() == threads
    with pytest.raises(ConfigError, match="set the config's fields instead"):
        rgbx.train(cfg, ["train.iters=1"])


def test_evaluate_refuses_a_dataset_with_other_classes(tmp_path):
    data = make_dataset(tmp_path / "data", n=4, size=(32, 32), modalities=("rgb",))
    model = rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=7, head_channels=16)
    with pytest.raises(ConfigError, match=r"the model predicts 7 classes but .* \[val\] has 3"):
        rgbx.evaluate(model, data, "val")


def test_class_names_that_differ_from_the_datasets_are_warned_about(tmp_path, capsys):
    """Same number of classes, other names (another dataset's model, or classes in another order): every per-class
    figure would be printed under the wrong name without a word. Case, spaces and '_' do not count."""
    import warnings

    import yaml

    from rgbx.engine.checkpoint import save_model

    data = make_dataset(tmp_path / "data", n=4, size=(32, 32), modalities=("rgb",))
    model = rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=3, head_channels=16)
    desc = yaml.safe_load((data / "dataset.yaml").read_text())
    save_model(tmp_path / "same.safetensors", model, {"classes": [c.upper() for c in desc["classes"]]})
    save_model(tmp_path / "other.safetensors", model, {"classes": desc["classes"][::-1]})
    save_model(tmp_path / "unnamed.safetensors", model, None)  # a converted release without --classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgbx.evaluate(tmp_path / "same.safetensors", data, "val")
        rgbx.evaluate(tmp_path / "unnamed.safetensors", data, "val")
    first, last = desc["classes"][0], desc["classes"][-1]
    expected = (f"other.safetensors names its classes otherwise than {data} [val] at 2 of 3 indices (model vs data: "
                f"0: {last!r} vs {first!r}, 2: {first!r} vs {last!r})")
    with pytest.warns(UserWarning, match=re.escape(expected)):
        rgbx.evaluate(tmp_path / "other.safetensors", data, "val")
    with pytest.warns(UserWarning, match="names its classes otherwise than"):
        assert main(["eval", str(tmp_path / "other.safetensors"), "--data", str(data), "--split", "val"]) == 0
    capsys.readouterr()


def test_resume_refuses_what_would_change_the_run_silently(tmp_path, monkeypatch):
    """A resumed run continues the saved one: other classes or training samples (data.root is not compared, the
    data may move), another optimizer setting (the restored optimizer kept the run's lr while config.yaml recorded
    the new one), or a state file another program wrote are errors that say what differs."""
    import shutil

    import yaml

    from rgbx.engine.checkpoint import save_model
    from rgbx.models import create_model

    data = make_dataset(tmp_path / "data", n=4, size=(32, 32), modalities=("rgb", "depth"))
    run = tmp_path / "run"
    overrides = [f"data.root={data}", f"output_dir={run}", "model.backbone=mit_nano", "model.head_channels=16",
                 "model.modalities=[rgb,depth]", "train.iters=2", "train.batch_size=2", "train.eval_every=0",
                 "data.crop_size=[32,32]", "data.num_workers=0", "train.eval_group_by=null"]
    rgbx.train("synth_cmx_b0", overrides)
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    desc = yaml.safe_load((renamed / "dataset.yaml").read_text())
    desc["classes"] = ["road", "car", "person"]
    (renamed / "dataset.yaml").write_text(yaml.safe_dump(desc))
    more = [*overrides, "train.iters=4"]
    with pytest.raises(rgbx.errors.CheckpointError, match=r"the run trained on other classes than .* has \(0: "
                                                          r"'ground' vs 'road', 1: 'box' vs 'car'\)"):
        rgbx.train("synth_cmx_b0", [*more, f"data.root={renamed}"], resume=True)
    # another dataset or split with the same classes: the samples differ (it resumed silently, recording the new one)
    other = tmp_path / "other_samples"
    shutil.copytree(data, other)
    ids = (other / "splits" / "train.txt").read_text().split()
    val = (other / "splits" / "val.txt").read_text().split()
    (other / "splits" / "train.txt").write_text("\n".join([*ids, val[0]]) + "\n")
    with pytest.raises(rgbx.errors.CheckpointError, match=rf"the run trained on other samples than .*other_samples \[train\] "
                                                          rf"holds \({len(ids)} samples, now {len(ids) + 1}\)"):
        rgbx.train("synth_cmx_b0", [*more, f"data.root={other}"], resume=True)
    (other / "splits" / "train.txt").write_text("\n".join([*ids[:-1], val[0]]) + "\n")
    with pytest.raises(rgbx.errors.CheckpointError, match=rf"\({len(ids)} samples with other ids\)"):
        rgbx.train("synth_cmx_b0", [*more, f"data.root={other}"], resume=True)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the same samples elsewhere: resumes
    assert rgbx.train("synth_cmx_b0", [*overrides, "train.iters=3", f"data.root={moved}"], resume=True)
    with pytest.raises(rgbx.errors.CheckpointError, match=r"another optim config \(optim.lr: the run's 0.0006, now "
                                                          r"0.1\); resume with the run's values"):
        rgbx.train("synth_cmx_b0", [*more, "optim.lr=0.1"], resume=True)
    with monkeypatch.context() as patch:  # compared before the model (or a teacher) is built from the config
        patch.setattr("rgbx.engine.trainer.create_model", lambda *a, **k: pytest.fail("model built before comparing"))
        with pytest.raises(rgbx.errors.CheckpointError, match=r"another model config \(model.head_channels: the "
                                                              r"run's 16, now 32\)"):
            rgbx.train("synth_cmx_b0", [*more, "model.head_channels=32"], resume=True)
    state = run / "checkpoints" / "last.state.pt"
    saved = state.read_bytes()
    torch.save({"a": torch.zeros(1)}, state)
    with pytest.raises(rgbx.errors.CheckpointError, match=r"not a training state rgbx wrote \(no iteration, "):
        rgbx.train("synth_cmx_b0", more, resume=True)
    state.write_bytes(b"")
    with pytest.raises(rgbx.errors.CheckpointError, match=r"last.state.pt: an empty file, not a training state"):
        rgbx.train("synth_cmx_b0", more, resume=True)
    state.write_text("iteration: 2\n")  # not torch.save's: no advice to unpickle it (weights_only=False)
    with pytest.raises(rgbx.errors.CheckpointError, match=r"not a file torch.save wrote, or a damaged one") as e:
        rgbx.train("synth_cmx_b0", more, resume=True)
    assert "False" not in str(e.value)  # torch's advice: load with weights_only=False
    state.write_bytes(saved)
    rgbx.train("synth_cmx_b0", more, resume=True)  # the same settings, a longer schedule: it continues

    # a folder with another model's best.safetensors and no state: --resume does not take it for this run's
    other = tmp_path / "other"
    other.mkdir()
    foreign = create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=3,
                           head_channels=16)
    save_model(other / "best.safetensors", foreign, {"classes": ["ground", "box", "person"]})
    kept = (other / "best.safetensors").read_bytes()
    with pytest.raises(rgbx.errors.RgbxError, match=r"best.safetensors is not this run's model"):
        rgbx.train("synth_cmx_b0", [*overrides, f"output_dir={other}"], resume=True)
    assert (other / "best.safetensors").read_bytes() == kept
    with pytest.raises(ConfigError, match=r"train.eval_group_by=weather: no sample of .* has that attribute "
                                          r"\(attributes here: condition"):
        rgbx.train("synth_cmx_b0", [*overrides, f"output_dir={tmp_path / 'g'}", "train.eval_group_by=weather"])
    with pytest.raises(rgbx.errors.CheckpointError, match=r"run: a folder, not a model file; it holds "
                                                          r"model.safetensors"):
        rgbx.train("synth_cmx_b0", [*overrides, f"output_dir={tmp_path / 'i'}", f"train.init_from={run}"])
