"""Plugins (rgbx.plugins): the user's own components loaded by --import, the config's `imports` and installed entry
points, recorded in model files; and the example plugin's components (examples/plugin) doing what they say."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import rgbx
import rgbx.data.datasets
import rgbx.data.transforms
import rgbx.methods
import rgbx.models  # noqa: F401  (rgbx's own components registered before the snapshots)
from rgbx import plugins
from rgbx.cli.main import main
from rgbx.data.sample import Batch
from rgbx.engine.config import MethodConfig, load_config
from rgbx.errors import CheckpointError, ConfigError
from rgbx.methods import METHODS, drop_modalities
from rgbx.methods.losses import SEGMENTATION_LOSSES
from rgbx.models import FUSIONS
from rgbx.models.model_file import read_model_info
from rgbx.registry import Registry
from tests.conftest import make_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"
PACKAGE = EXAMPLE / "rgbx_example_plugin"


@pytest.fixture(autouse=True)
def isolated_registries():
    """Each test's plugins are unloaded afterwards: registries, loaded plugins and modules as they were."""
    saved = [(r, dict(r._items), dict(r._origins)) for r in Registry.all()]
    loaded = dict(plugins._LOADED)
    modules = set(sys.modules)
    shared = os.environ.get(plugins.FILE_PLUGINS_ENV)
    yield
    if shared is None:
        os.environ.pop(plugins.FILE_PLUGINS_ENV, None)
    else:
        os.environ[plugins.FILE_PLUGINS_ENV] = shared
    for registry, items, origins in saved:
        registry._items.clear()
        registry._items.update(items)
        registry._origins.clear()
        registry._origins.update(origins)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    for name in set(sys.modules) - modules:
        if name.startswith(("rgbx_plugin_", "rgbx_example_plugin", "my_lab")):
            del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- loading


def test_a_file_plugin_registers_its_components_and_they_are_attributed_to_it(tmp_path, monkeypatch):
    assert "gated" not in FUSIONS
    module = plugins.load_plugin(str(PACKAGE / "gated_fusion.py"))
    spec = str(PACKAGE / "gated_fusion.py")
    assert FUSIONS.get("gated") is module.GatedFusion
    assert FUSIONS.origin("gated") == spec and FUSIONS.origin("cmx") is None
    assert plugins.registered_by(spec) == ["fusion gated"]
    assert spec in plugins.loaded_plugins()
    # the same file again (here relative to another folder): the module already loaded, nothing registered twice
    monkeypatch.chdir(PACKAGE.parent)
    assert plugins.load_plugin("rgbx_example_plugin/gated_fusion.py") is module
    assert rgbx.load_plugin(spec) is module


_SPAWN_SCRIPT = """
import sys
import torch
import rgbx  # as the rgbx command and any script using rgbx do: the child processes import it first


def main(plugin, method):
    module = rgbx.load_plugin(plugin)  # not at import time: a spawned child does not run it
    loader = torch.utils.data.DataLoader(module.Squares(), batch_size=2, num_workers=1,
                                         multiprocessing_context=method)
    for batch in loader:
        print(batch["value"].tolist(), batch["registered"].tolist(), batch["pid"].tolist())


if __name__ == "__main__":
    main(*sys.argv[1:])
"""

_SQUARES = """
import os
import torch
from rgbx.data import DATASETS
from rgbx.plugins import registered_by


@DATASETS.register("squares_doc")
class Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        # what this process registered from the plugin: it ran the file as rgbx.load_plugin does
        registered = any("squares_doc" in r for r in registered_by(os.path.abspath(__file__)))
        return {"value": i * i, "registered": registered, "pid": os.getpid()}
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_file_plugins_classes_reach_spawned_data_loader_workers(tmp_path, method):
    """A DataLoader worker started by spawn / forkserver (macOS, Windows; Linux from Python 3.14) unpickles the
    plugin's dataset by its module name without having loaded the plugin; it finds the file through the environment
    and registers its components there too."""
    plugin = write(tmp_path / "plug" / "squares.py", _SQUARES)
    script = write(tmp_path / "run.py", _SPAWN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != plugins.FILE_PLUGINS_ENV}
    r = subprocess.run([sys.executable, str(script), str(plugin), method], cwd=tmp_path, env={**env,
                       "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split("\n")
    assert lines[0].startswith("[0, 1] [True, True]") and lines[1].startswith("[4, 9] [True, True]"), r.stdout
    assert str(os.getpid()) not in r.stdout  # the items came from the workers


def test_a_file_plugin_is_listed_for_child_processes(tmp_path):
    plugin = write(tmp_path / "p.py", "X = 1\n")
    module = rgbx.load_plugin(str(plugin))
    assert str(plugin.resolve()) in plugins._shared_files()
    assert module.__name__ == plugins.file_module_name(str(plugin.resolve()))


def test_a_module_plugin_on_the_module_path(tmp_path, monkeypatch):
    write(tmp_path / "my_lab" / "__init__.py", "")
    write(tmp_path / "my_lab" / "losses.py", """
from rgbx.methods.losses import SEGMENTATION_LOSSES, build_cross_entropy
SEGMENTATION_LOSSES.register("my_ce", build_cross_entropy)
""")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.load_plugin("my_lab.losses")
    assert "my_ce" in SEGMENTATION_LOSSES and SEGMENTATION_LOSSES.origin("my_ce") == "my_lab.losses"
    assert plugins.registered_by("my_lab.losses") == ["segmentation loss my_ce"]


def test_bad_plugins_give_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"plugin .*nope\.py: file not found"):
        plugins.load_plugin(str(tmp_path / "nope.py"))
    with pytest.raises(ConfigError, match=r"plugin 'no_such_module_xyz': no module of that name on the module path"):
        plugins.load_plugin("no_such_module_xyz")
    # a file in the current folder named as a module: the hint gives the file form
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "my_gates.py", "x = 1\n")
    with pytest.raises(ConfigError, match=r"the current folder is not on the module path: give the file, "
                                          r"--import ./my_gates\.py"):
        plugins.load_plugin("my_gates")
    broken = write(tmp_path / "broken.py", (PACKAGE / "dice_loss.py").read_text() + "\nvalue = undefined_name + 1\n")
    line = len(broken.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"plugin {broken}: importing it failed: NameError: name 'undefined_name' "
                                          rf"is not defined \({broken}:{line}\)"):
        plugins.load_plugin(str(broken))
    assert not any(name.startswith("rgbx_plugin_broken") for name in sys.modules)
    # what it registered before failing is gone, so the mended file loads in the same process
    assert "ce_dice" not in SEGMENTATION_LOSSES
    broken.write_text((PACKAGE / "dice_loss.py").read_text())
    plugins.load_plugin(str(broken))
    assert SEGMENTATION_LOSSES.origin("ce_dice") == str(broken)
    clash = write(tmp_path / "clash.py", """
from rgbx.models import FUSIONS
from rgbx.models.fusions import MeanFusion

@FUSIONS.register("cmx")
class Mine(MeanFusion):
    pass
""")
    with pytest.raises(ConfigError, match=rf"ValueError: fusion 'cmx' is already registered \(by "
                                          rf"rgbx\.models\.fusions\.cmx\): choose "
                                          rf"another name \({clash}:5\)"):
        plugins.load_plugin(str(clash))
    with pytest.raises(ConfigError, match="expected a Python file"):
        plugins.load_plugin(str(write(tmp_path / "notes/readme.txt", "")))


def test_unknown_names_point_to_plugins():
    with pytest.raises(ConfigError, match=r"unknown fusion 'gated'; registered fusions: .*\(one of your own: load "
                                          r"its module first with --import"):
        FUSIONS.get("gated")


def test_prescan_reads_every_import_flag():
    argv = ["train", "cfg.yaml", "--import", "a.py", "x=1", "--import=my_lab.fusions", "--", "--import", "b"]
    assert plugins.prescan_imports(argv) == ["a.py", "my_lab.fusions"]


def test_every_command_takes_import(capsys):
    for command in (["train"], ["eval"], ["predict"], ["info"], ["data", "check"], ["export"], ["bench"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--import MODULE_OR_FILE" in capsys.readouterr().out, command


# ---------------------------------------------------------------- config and command line


def test_config_imports_are_relative_to_the_yaml_file(tmp_path, monkeypatch):
    config = write(tmp_path / "configs" / "gated.yaml", yaml.safe_dump({
        "imports": ["plugins/gates.py"], "model": {"fusion": "gated", "backbone": "mit_nano"}}))
    write(tmp_path / "configs" / "plugins" / "gates.py", (PACKAGE / "gated_fusion.py").read_text())
    monkeypatch.chdir(tmp_path / "configs" / "plugins")  # another folder than the YAML's
    cfg = load_config(config)
    assert cfg.imports == [str(tmp_path / "configs" / "plugins" / "gates.py")]
    assert FUSIONS.origin("gated") == cfg.imports[0]
    # on the command line, relative to the current folder; a plugin's loss is checked like rgbx's
    monkeypatch.chdir(PACKAGE)
    cfg = load_config(None, ["imports=[dice_loss.py]", "method.loss=ce_dice"])
    assert cfg.imports == [str(PACKAGE / "dice_loss.py")] and cfg.method.loss == "ce_dice"
    with pytest.raises(ConfigError, match="config key 'imports': expected a list of module names or .py files"):
        load_config(write(tmp_path / "bad.yaml", "imports: gates.py\n"))


def test_train_eval_and_info_with_plugins_from_the_command_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=6, size=(32, 32))
    run = tmp_path / "run"
    imports = ["--import", PACKAGE / "gated_fusion.py", "--import", PACKAGE / "consistency.py",
               "--import", PACKAGE / "dice_loss.py"]
    args = ["train", "synth_cmx_b0", f"data.root={data}", f"output_dir={run}", "model.backbone=mit_nano",
            "model.fusion=gated", "model.head_channels=16", "method.name=dropout_consistency",
            "method.loss=ce_dice", "method.options.weight=0.5", "train.iters=2", "train.batch_size=2",
            "train.eval_every=0", "data.crop_size=[32,32]", "data.num_workers=0", "train.eval_group_by=null"]
    assert main([str(a) for a in [*args, *imports]]) == 0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"ce_dice", "ce_dice_subset", "consistency"} <= set(header)
    recorded = yaml.safe_load((run / "config.yaml").read_text())["imports"]
    assert recorded == [str(PACKAGE / f) for f in ("gated_fusion.py", "consistency.py", "dice_loss.py")]
    info = read_model_info(run / "model.safetensors")
    assert info["plugins"] == {"fusion gated": str(PACKAGE / "gated_fusion.py")}
    capsys.readouterr()

    assert main(["info", "--import", str(PACKAGE / "gated_fusion.py")]) == 0
    assert f"{PACKAGE / 'gated_fusion.py'}: fusion gated" in capsys.readouterr().out

    # a fresh process would not have the plugin: unload it, and the file names what to load
    del FUSIONS._items["gated"]
    plugins._LOADED.pop(str(PACKAGE / "gated_fusion.py"))
    assert main(["eval", str(run / "model.safetensors"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert (f"its fusion 'gated' came from the plugin '{PACKAGE / 'gated_fusion.py'}', which is not loaded: load it "
            f"first (--import {PACKAGE / 'gated_fusion.py'}" in err)
    with pytest.raises(CheckpointError, match="came from the plugin"):
        rgbx.load_model(run / "model.safetensors")
    # rgbx info shows what the file records all the same (it stopped at the missing plugin)
    assert main(["info", str(run / "model.safetensors")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "model: gated/mit_nano over rgb+depth+thermal with 3 classes; mlp head (16 channels); not loaded: its " \
           "fusion 'gated' came from the plugin" in out
    assert "trained with:" in out and "history: iteration 2" in out
    assert main(["eval", str(run / "model.safetensors"), "--data", str(data), "--import",
                 str(PACKAGE / "gated_fusion.py"), "--json", str(tmp_path / "e.json")]) == 0
    assert (tmp_path / "e.json").is_file()
    # a run's config.yaml trains again by itself (its imports are absolute paths)
    del FUSIONS._items["gated"], METHODS._items["dropout_consistency"], SEGMENTATION_LOSSES._items["ce_dice"]
    plugins._LOADED.clear()
    assert main(["train", str(run / "config.yaml"), f"output_dir={tmp_path / 'again'}"]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()
    # and the command that started the run resumes it without --import: the run's config.yaml names its plugins
    # (it failed: "unknown fusion 'gated'")
    del FUSIONS._items["gated"], METHODS._items["dropout_consistency"], SEGMENTATION_LOSSES._items["ce_dice"]
    plugins._LOADED.clear()
    longer = [str(a) for a in args if a != "train.iters=2"] + ["train.iters=3"]
    assert main([*longer, "--resume"]) == 0
    assert read_model_info(run / "model.safetensors")["iteration"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["imports"] == recorded


def test_a_plugin_that_fails_stops_the_command_with_one_line(tmp_path, capsys):
    broken = write(tmp_path / "broken.py", "raise RuntimeError('needs a GPU driver')\n")
    assert main(["info", "--import", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err == f"rgbx: error: plugin {broken}: importing it failed: RuntimeError: needs a GPU driver ({broken}:1)\n"


def test_installed_plugins_load_by_their_entry_point(tmp_path):
    """A package that declares the entry point (here a dist-info folder on PYTHONPATH, as pip would write it) is
    loaded the first time a name is missing, in a fresh process, with nothing imported by hand."""
    site = tmp_path / "site"
    dist = site / "rgbx_example_plugin-0.1.0.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: rgbx-example-plugin\nVersion: 0.1.0\n")
    write(dist / "entry_points.txt", "[rgbx.plugins]\nexample = rgbx_example_plugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    code = ("import rgbx\n"
            "m = rgbx.create_model(backbone='mit_nano', fusion='gated', modalities=['rgb', 'depth'], num_classes=3,"
            " head_channels=16)\n"
            "from rgbx.models import FUSIONS\n"
            "print(type(m.encoder).__name__, FUSIONS.origin('gated'))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["GatedFusion", "rgbx_example_plugin"]
    off = subprocess.run([sys.executable, "-c", code], env={**env, "RGBX_DISABLE_PLUGIN_AUTOLOAD": "1"},
                         capture_output=True, text=True, timeout=120)
    assert off.returncode != 0 and "unknown fusion 'gated'" in off.stderr


# ---------------------------------------------------------------- the example plugin's components


def _tiny_gated(mean=False):
    plugins.load_plugin(str(PACKAGE / "gated_fusion.py"))
    torch.manual_seed(0)
    return rgbx.create_model(backbone="mit_nano", fusion="mean" if mean else "gated",
                             modalities=["rgb", "depth", "thermal"], num_classes=4, head_channels=16).eval()


def test_gated_fusion_starts_as_the_mean_and_weighs_only_present_sensors():
    gated, mean = _tiny_gated(), _tiny_gated(mean=True)
    missing = mean.load_state_dict(gated.state_dict(), strict=False)
    assert sorted({k.split(".")[1] for k in missing.unexpected_keys}) == ["gates"] and not missing.missing_keys
    inputs = {"rgb": torch.randn(2, 3, 32, 32), "depth": torch.randn(2, 1, 32, 32), "thermal": torch.randn(2, 1, 32, 32)}
    present = {"depth": torch.tensor([True, False])}
    with torch.no_grad():
        torch.testing.assert_close(gated(inputs, present).logits, mean(inputs, present).logits)  # zero gates
        for gate in gated.encoder.gates:  # trained gates: sensors weighted unequally
            gate.weight.normal_()
            gate.bias.normal_()
        both = gated(inputs, present).logits
        assert (both - mean(inputs, present).logits).abs().max() > 1e-3
        # sample 1 lacks depth: its output is that of the model given rgb + thermal only
        alone = gated({"rgb": inputs["rgb"][1:], "thermal": inputs["thermal"][1:]}).logits
        torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
        # one sensor: its features as they are, whatever the gate says
        out = gated.encoder({"rgb": inputs["rgb"]})
        torch.testing.assert_close(out.fused[2], out.features["rgb"][2])


def test_ce_dice_is_cross_entropy_plus_the_soft_dice_loss():
    module = plugins.load_plugin(str(PACKAGE / "dice_loss.py"))
    label = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 9.0]], [[0.0, 1.0], [3.0, -9.0]]]])  # (1, 2, 2, 2)
    p = logits.softmax(1)
    # by hand over the three labelled pixels: class 0 at (0,0), class 1 at (0,1) and (1,0)
    p0, p1 = p[0, 0].flatten()[:3], p[0, 1].flatten()[:3]
    g0, g1 = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 1])
    dice = [(2 * (pk * gk).sum() + 1) / (pk.sum() + gk.sum() + 1) for pk, gk in ((p0, g0), (p1, g1))]
    expected_dice = 1 - sum(dice) / 2
    torch.testing.assert_close(module.soft_dice_loss(logits, label, 255), expected_dice)
    loss = SEGMENTATION_LOSSES.get("ce_dice")(MethodConfig(), 255, None)
    ce = F.cross_entropy(logits, label, ignore_index=255)
    torch.testing.assert_close(loss(logits, label), ce + expected_dice)
    # the ignored pixel does not count; a confident right prediction has a Dice loss near 0
    changed = logits.clone()
    changed[0, :, 1, 1] = torch.tensor([-5.0, 5.0])
    torch.testing.assert_close(loss(changed, label), loss(logits, label))
    right = F.one_hot(label.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 50
    assert module.soft_dice_loss(right, label, 255) < 1e-6


def test_dropout_consistency_is_its_equation(tmp_path):
    plugins.load_plugin(str(PACKAGE / "consistency.py"))
    method_class = METHODS.get("dropout_consistency")
    config = MethodConfig(name="dropout_consistency", options={"weight": 0.5, "temperature": 2.0})
    method = method_class(config)
    with pytest.raises(ConfigError, match="0 < drop < 1"):
        method_class(MethodConfig(name="dropout_consistency", options={"drop": 1.5}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lambda'\]"):
        method_class(MethodConfig(name="dropout_consistency", options={"lambda": 1}))
    model = _tiny_gated().train()
    inputs = {"rgb": torch.randn(4, 3, 32, 32), "depth": torch.randn(4, 1, 32, 32), "thermal": torch.randn(4, 1, 32, 32)}
    batch = Batch(inputs=inputs, present={m: torch.ones(4, dtype=torch.bool) for m in inputs},
                  label=torch.randint(0, 4, (4, 32, 32)), meta=[{}] * 4)
    torch.manual_seed(1)
    terms = method.step(model, batch, torch.Generator().manual_seed(3))
    assert set(terms) == {"ce", "ce_subset", "consistency"}
    # the same draws by hand: drop_modalities with the same generator, the same model (dropout-free in eval)
    subset = drop_modalities(batch, 0.5, torch.Generator().manual_seed(3))
    assert any(not bool(v.all()) for v in subset.present.values())
    model.eval()
    method_eval = method.step(model, batch, torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, part = model(batch.inputs, batch.present).logits, model(subset.inputs, subset.present).logits
    kl = F.kl_div(F.log_softmax(part / 2, 1), F.softmax(full / 2, 1), reduction="none").sum(1).mean()
    torch.testing.assert_close(method_eval["consistency"].detach(), 0.5 * 4 * kl)
    torch.testing.assert_close(method_eval["ce_subset"].detach(), F.cross_entropy(part, batch.label))
    torch.testing.assert_close(method_eval["ce"].detach(), F.cross_entropy(full, batch.label))
    assert all(torch.isfinite(t) for t in terms.values())


# ---------------------------------------------------------------- docs/extending.md


def _doc_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_every_python_block_of_the_extending_page_runs_and_its_components_work(tmp_path):
    import numpy as np
    from PIL import Image

    from rgbx.data import DATASETS, collate
    from rgbx.data.transforms.photometric import PHOTOMETRIC
    from rgbx.modalities import MODALITIES

    blocks = _doc_blocks()
    assert len(blocks) == 8
    for i, block in enumerate(blocks):  # each block as a module of its own, as a plugin file would be
        module = types.ModuleType(f"rgbx_plugin_doc{i}")
        sys.modules[module.__name__] = module
        exec(compile(block, "docs/extending.md", "exec"), module.__dict__)
    for registry, name in ((FUSIONS, "max_doc"), (rgbx.models.BACKBONES, "resnet18_doc"),
                           (rgbx.models.HEADS, "linear_doc"), (SEGMENTATION_LOSSES, "focal_doc"),
                           (METHODS, "unimodal_aux_doc"), (DATASETS, "my_rig_doc"), (MODALITIES, "radar_doc"),
                           (PHOTOMETRIC, "speckle_doc")):
        assert name in registry

    # the dataset reads its layout, with and without its option
    rng = np.random.default_rng(0)
    for sid in ("a", "b"):
        for folder, array in (("cam", rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)),
                              ("tof", np.full((12, 16), 1500, np.uint16)),
                              ("mask", rng.integers(0, 3, (12, 16), dtype=np.uint8))):
            (tmp_path / "rig" / "train" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / "rig" / "train" / folder / f"{sid}.png")
    dataset = DATASETS.get("my_rig_doc")(tmp_path / "rig", "train", check="full")
    sample = dataset[0]
    assert len(dataset) == 2 and set(sample["inputs"]) == {"rgb", "depth"}
    assert torch.allclose(dataset.load(0)["inputs"]["depth"], torch.tensor(1.5))
    assert set(DATASETS.get("my_rig_doc")(tmp_path / "rig", "train", with_depth=False)[0]["inputs"]) == {"rgb"}
    with pytest.raises(rgbx.errors.SplitNotFoundError, match="no such folder"):
        DATASETS.get("my_rig_doc")(tmp_path / "rig", "val")

    # the method: the fused term and one per sensor, each sensor alone
    batch = collate([dataset[0], dataset[1]])
    model = rgbx.create_model(backbone="mit_nano", fusion="max_doc", modalities=["rgb", "depth"], num_classes=3,
                              head_channels=16).eval()  # no drop path: the same forward twice
    method = METHODS.get("unimodal_aux_doc")(MethodConfig(name="unimodal_aux_doc", options={"weight": 1.0}))
    terms = method.step(model, batch, torch.Generator().manual_seed(0))
    assert set(terms) == {"ce", "ce_rgb", "ce_depth"}
    with torch.no_grad():
        rgb_alone = model({"rgb": batch.inputs["rgb"]}).logits
    torch.testing.assert_close(terms["ce_rgb"].detach(), 0.5 * F.cross_entropy(rgb_alone, batch.label,
                                                                                ignore_index=255))
    # the max fusion: a sensor absent for a sample does not change that sample's fused maps
    out = model.encoder(batch.inputs, {"depth": torch.tensor([True, False])})
    alone = model.encoder({"rgb": batch.inputs["rgb"][1:]})
    torch.testing.assert_close(out.fused[1][1:], alone.fused[1])
    # the focal loss is the cross-entropy when γ = 0
    logits, label = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    label[0, 0, 0] = 255
    torch.testing.assert_close(SEGMENTATION_LOSSES.get("focal_doc")(None, 255, None, gamma=0.0)(logits, label),
                               F.cross_entropy(logits, label, ignore_index=255))
    # the augmentation draws from the generator it is given
    x = torch.ones(1, 8, 8)
    a = PHOTOMETRIC.get("speckle_doc")(x, torch.Generator().manual_seed(1), MODALITIES.get("radar_doc"))
    b = PHOTOMETRIC.get("speckle_doc")(x, torch.Generator().manual_seed(1), MODALITIES.get("radar_doc"))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_the_extending_page_dataset_is_checked_by_rgbx_data_check(tmp_path, capsys):
    """The page's dataset, as a plugin file, on a tree with train/ and val/: `rgbx data check` checks both (its
    SPLITS), finds a bad label in val, and skips a split that is not on disk (SplitNotFoundError)."""
    import numpy as np
    from PIL import Image

    from rgbx.data import check_dataset

    plugin = write(tmp_path / "my_ds.py", next(b for b in _doc_blocks() if '"my_rig_doc"' in b))
    root = tmp_path / "myrig"
    rng = np.random.default_rng(0)
    for split, ids in (("train", ("a", "b", "c")), ("val", ("d", "e"))):
        for sid in ids:
            for folder, array in (("cam", rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)),
                                  ("tof", np.full((12, 16), 1500, np.uint16)),
                                  ("mask", rng.integers(0, 3, (12, 16), dtype=np.uint8))):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / folder / f"{sid}.png")
    check = ["data", "check", str(root), "--dataset", "my_rig_doc", "--import", str(plugin)]
    assert main(check) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "train: 3 samples, val: 2 samples" in out and "skipped" not in out
    assert check_dataset(root, dataset="my_rig_doc") == {"train": 3, "val": 2}

    Image.fromarray(np.full((12, 16), 7, np.uint8)).save(root / "val" / "mask" / "e.png")  # not a class
    assert main(check) != 0
    assert "e.png" in capsys.readouterr().err

    import shutil

    shutil.rmtree(root / "val")  # a split not on disk is skipped, not a problem
    assert main(check) == 0
    out = capsys.readouterr().out
    assert "train: 3 samples" in out and "not on disk, skipped: split val" in out
    assert main([*check, "--split", "val"]) != 0  # named, its absence is a problem
    assert "no such folder" in capsys.readouterr().err


# ---------------------------------------------------------------- what a model file records it was made with


def test_model_files_record_the_environment_and_a_changed_plugin_is_noticed(tmp_path, capsys):
    import warnings

    data = make_dataset(tmp_path / "data", n=6, size=(32, 32), modalities=("rgb", "depth"))
    plugin = write(tmp_path / "lab" / "gates.py", (PACKAGE / "gated_fusion.py").read_text())
    run = tmp_path / "run"
    rgbx.train("synth_cmx_b0", [f"data.root={data}", f"output_dir={run}", "model.backbone=mit_nano",
                                "model.fusion=gated", "model.head_channels=16", "model.modalities=[rgb,depth]",
                                f"imports=[{plugin}]", "train.iters=1", "train.batch_size=2", "train.eval_every=0",
                                "data.crop_size=[32,32]", "data.num_workers=0", "train.eval_group_by=null"])
    env = read_model_info(run / "model.safetensors")["environment"]
    assert env["rgbx"] == rgbx.__version__ and env["torch"] == torch.__version__
    assert env["device"].startswith("cpu: ")
    import hashlib

    assert env["plugins"] == {str(plugin): hashlib.sha256(plugin.read_bytes()).hexdigest()}
    for name in ("best.safetensors", "checkpoints/last.safetensors"):
        assert read_model_info(run / name)["environment"] == env
    assert main(["info", str(run / "model.safetensors"), "--import", str(plugin)]) == 0
    assert f"trained with: rgbx {rgbx.__version__}" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same source: nothing to say
        rgbx.load_model(run / "model.safetensors")
    plugin.write_text(plugin.read_text() + "\n# tuned the gate's initialisation\n")
    with pytest.warns(UserWarning, match=rf"the plugin {plugin} has changed since this model was trained"):
        rgbx.load_model(run / "model.safetensors")
