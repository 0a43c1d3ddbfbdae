import pytest

from rgbx.engine.config import load_config, to_yaml
from rgbx.errors import ConfigError


def test_preset_and_overrides():
    cfg = load_config("synth_cmx_b0", ["train.iters=7", "model.fusion=mean", "data.crop_size=[32,48]"])
    assert cfg.train.iters == 7 and cfg.model.fusion == "mean" and cfg.data.crop_size == [32, 48]
    assert "iters: 7" in to_yaml(cfg)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="trian"):
        load_config("synth_cmx_b0", ["trian.iters=3"])
    with pytest.raises(ConfigError, match="itres"):
        load_config("synth_cmx_b0", ["train.itres=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.iters"):
        load_config(None, ["train.iters=many"])


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  backbone: mit_b0\n  fusoin: cmx\n")
    with pytest.raises(ConfigError, match="fusoin"):
        load_config(p)


def test_missing_file_lists_presets():
    with pytest.raises(ConfigError, match="synth_cmx_b0"):
        load_config("no_such_config")


def test_invalid_values():
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="data.crop_padding must be end or centre"):
        load_config(None, ["data.crop_padding=center"])


@pytest.mark.parametrize("override,message", [("train.log_every=0", "train.log_every must be > 0"),
                                              ("train.checkpoint_every=-1", "train.checkpoint_every must be >= 0"),
                                              ("train.eval_every=-5", "train.eval_every must be >= 0")])
def test_bad_intervals_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_the_validation_miou_convention_follows_the_published_evaluation():
    from rgbx.engine.config import validation_miou_convention

    assert validation_miou_convention(load_config("nyu_dformer_l")) == "all"  # DFormer's NaN → 0 mean
    assert validation_miou_convention(load_config("deliver_cmnext_b2")) == "all"
    assert validation_miou_convention(load_config("nyu_cmx_b2")) == "present"  # CMX averages the classes present
    assert validation_miou_convention(load_config("synth_cmx_b0")) == "present"  # no published protocol
    assert validation_miou_convention(load_config("nyu_dformer_l", ["train.eval_miou=present"])) == "present"
    assert validation_miou_convention(load_config("synth_cmx_b0", ["train.eval_miou=all"])) == "all"
    with pytest.raises(ConfigError, match="train.eval_miou must be present or all"):
        load_config(None, ["train.eval_miou=mean"])


def test_overrides_may_follow_the_flags(capsys):
    """`rgbx train CONFIG --print-config a.b=1` (a flag typed before the overrides) used to be argparse's top-level
    'unrecognized arguments'; an item that is not key=value still is an error."""
    from rgbx.cli.main import main

    assert main(["train", "synth_cmx_b0", "--print-config", "train.iters=7", "data.root=somewhere"]) == 0
    printed = capsys.readouterr().out
    assert "iters: 7" in printed and "root: somewhere" in printed
    with pytest.raises(SystemExit):
        main(["train", "synth_cmx_b0", "--print-config", "train.iters=7", "stray"])
    assert "unrecognized arguments: train.iters=7 stray" in capsys.readouterr().err


def test_the_cli_prints_rgbx_warnings_as_one_line_and_others_as_python_does(capsys):
    """rgbx's advice (a UserWarning raised in the package) reads like its errors, `rgbx CMD: warning: ...`, not
    `/site-packages/rgbx/cli/evaluate.py:207: UserWarning: ...`; torch's or a plugin's warnings keep Python's form.
    main() puts the formatter back when it returns."""
    import warnings

    import rgbx.engine.checkpoint
    from rgbx.cli.main import main, warning_formatter

    fmt = warning_formatter("eval")
    assert fmt(UserWarning("classes differ"), UserWarning, rgbx.engine.checkpoint.__file__, 7) == \
        "rgbx eval: warning: classes differ\n"
    assert fmt(UserWarning("a plugin's"), UserWarning, "/elsewhere/plugin.py", 7, "") == \
        "/elsewhere/plugin.py:7: UserWarning: a plugin's\n"
    assert "DeprecationWarning: old" in fmt(DeprecationWarning("old"), DeprecationWarning,
                                            rgbx.engine.checkpoint.__file__, 7, "")
    before = warnings.formatwarning
    assert main(["train", "synth_cmx_b0", "--print-config"]) == 0
    capsys.readouterr()
    assert warnings.formatwarning is before


@pytest.mark.parametrize("text,message", [
    ("data:\n  crop_size: {h: 32, w: 40}\n", r"data.crop_size: expected a list \(e.g. \[240, 320\]\), got a mapping"),
    ("data:\n  options: [1, 2]\n", r"data.options: expected a mapping \(e.g. \{key: value\}\), got a list \[1, 2\]"),
    ("model: 5\n", r"model: expected a mapping of its settings \(backbone"),
    ("model:\n  modalities: rgb\n", r"model.modalities: expected a list \(e.g. \[rgb, depth\]\), got 'rgb'"),
    ("train:\n  freeze: encoder\n", r"train.freeze: expected a list \(e.g. \[encoder\]\), got 'encoder'"),
    ("data:\n  crop_size: 32\n", r"data.crop_size: expected a list \(e.g. \[240, 320\]\), got 32"),
    ("optim:\n  lr: [0.1, 0.2]\n", r"optim.lr: expected a single value, got a list"),
    ("- a\n- b\n", r"expected a mapping of config sections \(model, data, train, ...\), got a list"),
    ("just a string\n", r"expected a mapping of config sections \(model, data, train, ...\), got the value 'just a"),
    ("", r"the file is empty; a config needs at least one section"),
    ("# only a comment\n", r"the file is empty"),
])
def test_a_yaml_value_of_the_wrong_kind_names_the_file_and_key(tmp_path, text, message):
    """A list, a mapping or a single value where another kind goes (or a file that is not a mapping of sections, or
    is empty) is a ConfigError naming the file and key in rgbx's words, not a TypeError from OmegaConf's merge, its
    jargon ("AnyNode is not a ListConfig"), nor all defaults taken silently for an empty file."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: ")


@pytest.mark.parametrize("override,message", [
    ("model.modalities=rgb", r"model.modalities: expected a list \(e.g. \[rgb, depth\]\), got 'rgb'"),
    ("train.freeze=encoder", r"train.freeze: expected a list \(e.g. \[encoder\]\), got 'encoder'"),
    ("data.crop_size={h: 3}", r"data.crop_size: expected a list .*, got a mapping"),
    ("data.options=[1,2]", r"data.options: expected a mapping .*, got a list \[1, 2\]"),
])
def test_an_override_of_the_wrong_kind_names_the_override_and_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert str(info.value).startswith(f"override {override!r}: ")


def test_a_folder_given_as_the_config_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a YAML config file or a preset name"):
        load_config(tmp_path)


@pytest.mark.parametrize("ops,message", [
    ("{rgb: [{name: color_jitter, p: 5}]}", r"photometric_ops.rgb\[0\]: color_jitter p: expected a number in \[0, 1\]"),
    ("{rgb: [{name: color_jitter, hue: 7}]}", r"rgb\[0\]: color_jitter hue: expected a number in \[0, 0.5\], got 7"),
    ("{rgb: [{name: color_jitter, hue: high}]}", r"rgb\[0\]: color_jitter hue: expected a number .*, got 'high'"),
])
def test_photometric_op_parameters_are_checked_with_the_config(ops, message):
    """Out-of-range or mistyped op parameters are refused when the config is loaded (--print-config), not accepted
    (p: 5) or left to fail at the first training step (hue: high)."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.photometric_ops={ops}"])
