"""The experiment configuration: typed dataclasses, loaded from YAML with ``key=value`` overrides (OmegaConf).

An unknown key or a value of the wrong type is a :class:`~rgbx.errors.ConfigError` naming the key. The resolved
configuration is saved in every run folder (``config.yaml``) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rgbx.engine.metrics import MIOU_CONVENTIONS
from rgbx.errors import ConfigError
from rgbx.methods.losses import SEGMENTATION_LOSSES, build_segmentation_loss
from rgbx.models import ModelConfig
from rgbx.models.convert import REFERENCE_EVALUATION
from rgbx.plugins import load_plugins, resolve_spec

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    dataset: str = "folder"  # a registered dataset (rgbx info): "folder" = the rgbx format
    root: str = "data/synth"
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific arguments (see its docstring)
    train_split: str = "train"
    val_split: str = "val"
    modalities: list[str] | None = None  # default: the model's modalities
    crop_size: list[int] = field(default_factory=lambda: [240, 320])  # [H, W]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    scales: list[float] | None = None  # the resize factor drawn from these instead (CMX / DFormer: 0.5, ..., 1.75)
    hflip_prob: float = 0.5
    photometric: bool = True
    # sensor → its own photometric ops instead of its spec's: op names, or {name: OP, parameter: value, ...};
    # [] = none for that sensor (e.g. rgb: [{name: color_jitter, p: 0.2, hue: 0.0}], lidar: [])
    photometric_ops: dict[str, Any] = field(default_factory=dict)
    # where the random resize / crop / flip runs: "sample" (each sample, in the loader workers) or "batch" (the
    # collated batch, on the training device: frees the workers' CPUs when they cannot keep up with the GPU)
    geometric_on: str = "sample"
    # where a crop larger than the resized image is padded, and with what: "end" (after the image, each sensor's
    # empty value: black, no measurement) or "centre" (on both sides, each sensor at the network's zero input:
    # CMX's and DFormer's random_crop_pad_to_shape, which pads after normalising)
    crop_padding: str = "end"
    num_workers: int | None = None  # loader processes; None = auto (engine.trainer.loader_workers)
    check: str = "headers"  # dataset validation when opened: none | headers | full
    # a sensor whose frame fails the sensor checks (black, empty, saturated, mostly NaN: rgbx.data.sensor_health) is
    # absent from that sample, in training and validation, as `rgbx predict --check-sensors` treats it at run time
    screen_sensors: bool = False
    sensor_rules: list[str] = field(default_factory=list)  # thresholds: "[SENSOR.]KEY=VALUE", e.g. depth.min_coverage=0.05


@dataclass
class MethodConfig:
    name: str = "supervised"
    modality_dropout: float = 0.0  # per sample and modality drop probability; at least one modality is kept
    label_smoothing: float = 0.0
    class_weighting: str = "none"  # none | enet: w_c = 1 / ln(1.02 + p_c), p_c from the training labels
    # the loss against the labels in every method (rgbx.methods.losses): ce | ohem (hard pixels: those whose true
    # class has probability < ohem_thresh, at least the ohem_min_kept fraction of labelled pixels; DeLiVER / CMNeXt)
    loss: str = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: float = 0.0625
    options: dict[str, Any] = field(default_factory=dict)  # the method's own settings (see its Options dataclass)


@dataclass
class OptimConfig:
    lr: float = 6e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_iters: int = 50
    warmup_ratio: float = 1e-3  # lr at step 0 = lr × warmup_ratio
    poly_power: float = 1.0
    # where the poly decay's t counts from: warmup_end (mmsegmentation, DeLiVER) | start (CMX, DFormer)
    poly_from: str = "warmup_end"
    grad_clip: float | None = None  # max gradient norm, None = off
    head_lr_mult: float = 10.0


@dataclass
class TrainConfig:
    iters: int = 2000
    batch_size: int = 8
    # micro-batches of batch_size whose gradients are summed before each optimizer step: the global batch is
    # batch_size × accumulate_grad_batches × processes (BatchNorm still sees batch_size); iters counts steps
    accumulate_grad_batches: int = 1
    eval_batch_size: int = 8
    eval_every: int = 500  # 0 = only at the end
    checkpoint_every: int = 200  # 0 = only at the end (a killed run then restarts from the beginning)
    log_every: int = 20
    # speed switches (rgbx.engine.fastpath). A switch left at None takes the device's default: on CUDA the fast set
    # (bf16, channels-last, TF32, cuDNN autotuning, fused AdamW, folded head, bf16 LayerNorms, matrix-product
    # resizing, fused projections), elsewhere the exact fp32 path (with the folded head and the host memory kept).
    # speed: "custom" = the switches as set; "fast" / "exact" = the device's fast set / everything off, written over
    # precision, channels_last, tf32, cudnn_benchmark, fused_optimizer, fold_head, lowp_norms, matmul_resize,
    # fuse_projections, keep_host_memory and model.attn_impl (compile stays its own choice)
    speed: str = "custom"
    precision: str | None = None  # fp32 | bf16 | fp16 (autocast; fp16 only on CUDA)
    channels_last: bool | None = None  # NHWC weights and inputs
    compile: bool = False  # torch.compile the model
    compile_scope: str = "blocks"  # blocks: each block compiled on its own (fast to compile) | model: forward + loss
    compile_mode: str | None = None  # torch.compile mode, e.g. max-autotune
    compile_backend: str | None = None  # torch.compile backend (default inductor; aot_eager to debug)
    tf32: bool | None = None  # TF32 matmuls on CUDA
    cudnn_benchmark: bool | None = None  # cuDNN autotuning for fixed shapes
    fused_optimizer: bool | None = None  # fused AdamW
    # the head's fusion conv per stage before upsampling (same function, fewer ops); None = on; off: speed=exact
    fold_head: bool | None = None
    # LayerNorms in bf16 under bf16 autocast (CUDA's autocast runs them in fp32: the residual stream then stays fp32);
    # None = the device's fast set (on for CUDA; the CPU's autocast already works this way)
    lowp_norms: bool | None = None
    # bilinear resizing and DFormer's adaptive pooling as matrix products (no atomics in the backward pass); None = the
    # device's fast set (on for CUDA)
    matmul_resize: bool | None = None
    # DFormer-style blocks: projections fused and layer scales folded, formed from the weights at every step (same
    # gradients); None = the device's fast set (on for CUDA)
    fuse_projections: bool | None = None
    # glibc's malloc keeps freed host memory for reuse (no page faults on big tensors; the same values, bit for bit;
    # the process keeps its peak memory); None = on for the CPU, off for CUDA
    keep_host_memory: bool | None = None
    # the whole training step captured once as a CUDA graph and replayed (CUDA; supervised, anyseg, ktb, primkd,
    # modality dropout and missing sensors then decided on the device; bf16 / fp32, one process): one launch a step
    cuda_graph_train: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None = torch default)
    eval_group_by: str | None = "condition"  # report eval metrics per value of this sample attribute
    # mIoU convention of the validation during training (the logged figure, best.safetensors): present | all (see
    # rgbx.engine.metrics); None = that of the preset's published_evaluation (DFormer, CMNeXt: all), else present
    eval_miou: str | None = None
    # at the end, fit confidence temperatures per sensor set on the validation split and record them in the final
    # model file (what rgbx calibrate does: rgbx.engine.calibration)
    calibrate: bool = False
    tensorboard: bool = False
    # multi-process runs under torchrun (rgbx.engine.distributed); batch_size is per process
    sync_bn: bool = True  # BatchNorm statistics over all processes (CUDA)
    # DDP: parameters may go unused in a step (a dropped or missing sensor's branch); None = auto: on unless plain
    # supervised training without modality dropout on a dataset whose every sample has every sensor
    find_unused_parameters: bool | None = None
    # how long a process waits for the others (in a collective operation, or at a step boundary for the vote on
    # stopping) before the launch fails
    distributed_timeout_s: float = 1800.0
    # fine-tuning: start from another trained model (an rgbx model file, or a converted release) instead of the
    # model's own initialisation; what fits is copied, the classifier by class name, a sensor the file lacks from
    # one it has (rgbx.models.transfer); ignored when --resume continues a run
    init_from: str = ""
    init_modality_from: dict[str, str] = field(default_factory=dict)  # e.g. {thermal: depth}, {thermal: none}
    # module paths whose parameters are not trained, e.g. [encoder] (the head alone) or [encoder.branches.rgb], or
    # parameter-name patterns with * / ? (fnmatch), e.g. encoder.encoder.stages.*.layer_scale_*
    freeze: list[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # the published evaluation protocol of the benchmark and code this run reproduces, by name (a key of
    # rgbx.models.convert.REFERENCE_EVALUATION, e.g. cmx, dformer, cmnext/deliver); recorded in the model files, so
    # that ``rgbx eval FILE --as-published`` scores the trained model as the authors' code scored theirs. "" = none
    published_evaluation: str = ""
    # plugins imported before anything is built (rgbx.plugins): module names or .py files (a file relative to the
    # YAML file that names it, or to the current folder on the command line; kept as an absolute path)
    imports: list[str] = field(default_factory=list)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _config_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None)
    msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
    if key:
        return ConfigError(f"{where}: config key {key!r}: {msg}")
    return ConfigError(f"{where}: {msg}")


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                resume: bool = False) -> ExperimentConfig:
    """Build the experiment config from defaults, a YAML file (or preset name) and ``key=value`` overrides.

    ``resume=True`` (``rgbx train ... --resume``): the plugins of the run in ``output_dir`` (its ``config.yaml``'s
    ``imports``) are loaded and kept too, so that the run resumes with the command that started it, without
    ``--import`` again."""
    schema = OmegaConf.structured(ExperimentConfig)
    # a frozen dataclass (ModelConfig) makes a read-only node, which OmegaConf 2.3 refuses to merge overrides into
    # (2.4 allows it); the dataclasses built at the end are frozen again
    for key in schema:
        section = schema[key]
        if OmegaConf.is_config(section) and OmegaConf.is_readonly(section):
            OmegaConf.set_readonly(section, None)
    layers = [schema]
    if source is not None:
        path = Path(source)
        if not path.is_file() and (PRESETS_DIR / f"{source}.yaml").is_file():
            path = PRESETS_DIR / f"{source}.yaml"
        if path.is_dir():
            raise ConfigError(f"{source}: is a folder; give a YAML config file or a preset name (built-in presets: "
                              f"{', '.join(list_presets())})")
        if not path.is_file():
            raise ConfigError(f"{source}: config file not found (built-in presets: {', '.join(list_presets())})")
        _check_top_level(path)
        try:
            layer = OmegaConf.load(path)
        except Exception as e:  # noqa: BLE001 — YAML errors come in several types
            raise ConfigError(f"{path}: not a valid YAML config ({e})") from None
        _check_shapes(layer, schema, str(path))
        _resolve_imports(layer, path.parent, str(path))
        layers.append(layer)
        where = str(path)
    else:
        where = "config"
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.iters=100")
    try:
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as e:
        raise _config_error(e, where) from None
    override_layers = [_override_layer(item) for item in overrides]
    for item, layer in zip(overrides, override_layers):
        _check_shapes(layer, schema, f"override {item!r}")
    try:
        merged = OmegaConf.merge(merged, *override_layers)
    except OmegaConfBaseException as e:
        raise _config_error(e, "command-line override") from None
    _resolve_imports(merged, Path.cwd(), "command-line override")
    if resume:
        merged.imports = list(dict.fromkeys([*merged.imports, *run_imports(merged.output_dir)]))
    load_plugins(merged.imports)  # before anything names their components
    cfg: ExperimentConfig = OmegaConf.to_object(merged)
    validate_config(cfg)
    return cfg


_SECTIONS = "model, data, train, ..."
_LIST_EXAMPLES = {"model.modalities": "[rgb, depth]", "data.modalities": "[rgb, depth]", "train.freeze": "[encoder]",
                  "data.crop_size": "[240, 320]"}


def _check_top_level(path: Path) -> None:
    """A config file must hold a non-empty mapping of sections: an empty file, a list or a bare value is an error
    naming the file (OmegaConf would take an empty file for all defaults, and report the others in its own terms)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 — OmegaConf.load reports what it cannot read
        return
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a config needs at least one section of settings "
                          f"({_SECTIONS}), e.g. data: {{root: data/synth}}, or use a preset name")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {data!r}"
        raise ConfigError(f"{path}: expected a mapping of config sections ({_SECTIONS}), got {kind}")


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"a mapping {value!r}"
    if isinstance(value, list):
        return f"a list {value!r}"
    return repr(value)


def _check_shapes(layer, schema, where: str, prefix: str = "") -> None:
    """Every value of ``layer`` (a YAML file or an override) of the kind its key takes: a list, a mapping or a single
    value, else a :class:`ConfigError` naming ``where`` and the key in rgbx's words (OmegaConf raises a TypeError
    for some of these and words the others in its own terms, differently from one version to the next)."""
    if not OmegaConf.is_dict(layer):
        return
    values = OmegaConf.to_container(layer, resolve=False)
    _check_shape_values(values, schema, where, prefix)


def _check_shape_values(values: dict, schema, where: str, prefix: str) -> None:
    for key, value in values.items():
        if not isinstance(key, str) or key not in schema:
            continue  # an unknown key: OmegaConf names it
        full = f"{prefix}{key}"
        node = schema._get_node(key)
        if value is None or (isinstance(value, str) and "${" in value):
            continue  # null (OmegaConf checks that it is allowed) or an interpolation
        if OmegaConf.is_list(node):
            if not isinstance(value, list) and full == "imports":
                raise ConfigError(f"{where}: config key 'imports': expected a list of module names or .py files, "
                                  f"got {value!r}")
            if not isinstance(value, list):
                example = _LIST_EXAMPLES.get(full)
                raise ConfigError(f"{where}: {full}: expected a list{f' (e.g. {example})' if example else ''}, got "
                                  f"{_describe(value)}")
        elif OmegaConf.is_dict(node):
            if not isinstance(value, dict):
                if dataclasses.is_dataclass(OmegaConf.get_type(node)):
                    expected = f"a mapping of its settings ({', '.join(list(node)[:3])}, ...)"
                else:
                    expected = "a mapping (e.g. {key: value})"
                raise ConfigError(f"{where}: {full}: expected {expected}, got {_describe(value)}")
            if dataclasses.is_dataclass(OmegaConf.get_type(node)):
                _check_shape_values(value, node, where, f"{full}.")
        elif isinstance(value, (list, dict)):
            raise ConfigError(f"{where}: {full}: expected a single value, got {_describe(value)}")


def _override_layer(item: str):
    """One ``key=value`` override as a config layer; a value that is not YAML, or a flow mapping written without the
    space YAML needs after ':' (``{thermal:depth}`` is the key 'thermal:depth'), is an error naming the override."""
    key, value = item.split("=", 1)
    hint = "YAML needs a space after ':' in a mapping, e.g. {thermal: depth} or [{name: color_jitter}]"
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        advice = hint if ":" in value else "check its brackets and quotes, e.g. data.crop_size=[240,320]"
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); {advice}") from None

    def glued(v) -> bool:  # {a:b} read as the key 'a:b' without a value
        if isinstance(v, dict):
            return any((isinstance(k, str) and ":" in k and w is None) or glued(w) for k, w in v.items())
        return isinstance(v, list) and any(glued(w) for w in v)

    if glued(parsed):
        raise ConfigError(f"override {item!r}: {hint}")
    return OmegaConf.from_dotlist([f"{key}={value}"])


def run_imports(output_dir: str | Path) -> list[str]:
    """The ``imports`` a run folder's ``config.yaml`` records (none where there is no such file yet)."""
    path = Path(output_dir) / "config.yaml"
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the run's config ({e}); --resume needs it") from None
    imports = saved.get("imports") if isinstance(saved, dict) else None
    if imports is None:
        return []
    if not isinstance(imports, list) or not all(isinstance(s, str) for s in imports):
        raise ConfigError(f"{path}: config key 'imports': expected a list of module names or .py files, got "
                          f"{imports!r}")
    return imports


def _resolve_imports(layer, base_dir: Path, where: str) -> None:
    """Make the ``imports`` of one config layer independent of the current folder (files as absolute paths)."""
    if not OmegaConf.is_dict(layer) or "imports" not in layer:
        return
    imports = layer.imports
    if isinstance(imports, str) or not OmegaConf.is_list(imports) or not all(isinstance(s, str) for s in imports):
        raise ConfigError(f"{where}: config key 'imports': expected a list of module names or .py files, got "
                          f"{OmegaConf.to_container(imports) if OmegaConf.is_config(imports) else imports!r}")
    layer.imports = [resolve_spec(spec, base_dir) for spec in imports]


def validate_config(cfg: ExperimentConfig) -> None:
    checks = [
        (cfg.train.precision in (None, "fp32", "bf16", "fp16"), "train.precision must be fp32, bf16 or fp16"),
        (cfg.train.iters > 0, "train.iters must be > 0"),
        (cfg.train.batch_size > 0, "train.batch_size must be > 0"),
        (cfg.train.accumulate_grad_batches > 0, "train.accumulate_grad_batches must be >= 1 (1 = no accumulation)"),
        (cfg.train.log_every > 0, "train.log_every must be > 0"),
        (cfg.train.eval_every >= 0, "train.eval_every must be >= 0 (0 = only at the end)"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0 = only at the end)"),
        (len(cfg.data.crop_size) == 2 and min(cfg.data.crop_size) > 0, "data.crop_size must be [H, W] > 0"),
        (len(cfg.data.scale_range) == 2 and 0 < cfg.data.scale_range[0] <= cfg.data.scale_range[1],
         "data.scale_range must be [min, max] with 0 < min <= max"),
        (cfg.data.scales is None or (len(cfg.data.scales) > 0 and min(cfg.data.scales) > 0),
         "data.scales must be a non-empty list of positive resize factors (or null: data.scale_range)"),
        (0.0 <= cfg.method.modality_dropout < 1.0, "method.modality_dropout must be in [0, 1)"),
        (cfg.data.check in ("none", "headers", "full"), "data.check must be none, headers or full"),
        (cfg.data.geometric_on in ("sample", "batch"), "data.geometric_on must be sample or batch"),
        (cfg.data.crop_padding in ("end", "centre"), "data.crop_padding must be end or centre"),
        (cfg.method.class_weighting in ("none", "enet"), "method.class_weighting must be none or enet"),
        (cfg.optim.poly_from in ("warmup_end", "start"), "optim.poly_from must be warmup_end or start"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}"),
        (len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
         f"optim.betas must be two numbers in [0, 1), got {list(cfg.optim.betas)}"),
        (cfg.optim.warmup_iters >= 0, f"optim.warmup_iters must be >= 0, got {cfg.optim.warmup_iters}"),
        (0 <= cfg.optim.warmup_ratio <= 1, f"optim.warmup_ratio must be in [0, 1], got {cfg.optim.warmup_ratio}"),
        (cfg.optim.poly_power >= 0, f"optim.poly_power must be >= 0, got {cfg.optim.poly_power}"),
        (cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0,
         f"optim.grad_clip must be > 0 (or null: off), got {cfg.optim.grad_clip}"),
        (cfg.optim.head_lr_mult >= 0, f"optim.head_lr_mult must be >= 0, got {cfg.optim.head_lr_mult}"),
        (cfg.method.loss in SEGMENTATION_LOSSES,
         f"unknown method.loss {cfg.method.loss!r}; registered: {', '.join(SEGMENTATION_LOSSES.names())}"),
        (len(cfg.model.modalities) > 0, "model.modalities must list at least one modality"),
        (cfg.train.init_from or not cfg.train.init_modality_from,
         "train.init_modality_from says which sensor's weights a new sensor starts from: it needs train.init_from"),
        (not cfg.published_evaluation or cfg.published_evaluation in REFERENCE_EVALUATION,
         f"unknown published_evaluation {cfg.published_evaluation!r}; known: {', '.join(REFERENCE_EVALUATION)}"),
        (cfg.train.eval_miou in (None, *MIOU_CONVENTIONS),
         f"train.eval_miou must be {' or '.join(MIOU_CONVENTIONS)} (or null: the published evaluation's), got "
         f"{cfg.train.eval_miou!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    build_segmentation_loss(cfg.method)  # the loss's own settings (e.g. OHEM's threshold), checked where it is built
    from rgbx.data.transforms.photometric import build_photometric_ops

    build_photometric_ops(cfg.data.photometric_ops)  # each op's parameters (names, types, ranges), before training


def validation_miou_convention(cfg: ExperimentConfig) -> str:
    """The mIoU convention of the validation during training: ``train.eval_miou``, else the one the preset's
    published evaluation uses (``--miou all`` in its flags), else ``present``."""
    if cfg.train.eval_miou is not None:
        return cfg.train.eval_miou
    if cfg.published_evaluation and "--miou all" in REFERENCE_EVALUATION[cfg.published_evaluation][1]:
        return "all"
    return "present"


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ExperimentConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))
