"""Load the field's released checkpoints into rgbx models: a registry of checkpoint *layouts*.

Entry point: :func:`convert_checkpoint` (``rgbx convert`` on the command line)::

    from rgbx.models import create_model
    from rgbx.models.convert import convert_checkpoint

    model = create_model(backbone="mit_b2", fusion="cmx", head="mlp", modalities=["rgb", "depth"],
                         num_classes=40, head_channels=512)
    report = convert_checkpoint("NYUDV2_CMX+Segformer-B2.pth", model)      # layout detected from the key names
    print(report.summary())

Layouts (:data:`LAYOUTS`; ``layout="auto"`` picks the first whose key names match, in this order):

``cmnext``
    The CMNeXt model of DELIVER (https://github.com/jamycheung/DELIVER, ``semseg/models/cmnext.py``): ``backbone.*``
    = its ``CMNeXt`` backbone (the RGB MiT ``patch_embed1-4`` / ``block1-4`` / ``norm1-4``, the supplementary
    branch ``extra_downsample_layers.i`` / ``extra_score_predictor.i`` / ``extra_block1-4`` / ``extra_norm1-4``,
    ``FRMs.0-3``, ``FFMs.0-3``) and ``decode_head.*`` = its ``SegFormerHead``, into a ``cmnext`` fusion model
    (``mit_b2`` / ``mit_b4`` / ``mit_b5``) with the ``mlp`` head (``head_channels`` = 512 for B2-B5); the names are
    mapped by :func:`rgbx.models.fusions.cmnext.cmnext_key_map` (a state dict of the backbone alone, without
    ``backbone.``, fills the encoder only). Detected from ``extra_downsample_layers`` (or CMNeXt's
    ``extra_score_predictor`` without CMX's ``extra_patch_embed``). The checkpoint's per-modality modules
    (``norm.ln_k``, ``score_nets.k``) are indexed by position in the reference's ``MODALS`` list: the checkpoint's
    modality order is taken to be the model's modalities with its primary one (``img`` → ``rgb``) first and the
    supplementary ones in their configured order; when the checkpoint's order differs, give it as
    ``modality_order`` (``rgbx convert --modality-order``; DELIVER's configs list ``img, depth, event, lidar``). The
    number of supplementary modalities must match the checkpoint's. The shared supplementary stem is stored with 3
    input channels in both code bases and is copied unchanged: rgbx folds it onto a modality's channels at run time
    (exact for DELIVER's inputs, a 1-channel depth / LiDAR image repeated 3 times and 2-channel events repeated
    cyclically; see :mod:`rgbx.models.fusions.cmnext`), so a model whose supplementary modalities have more than 3
    channels does not fit (a shape mismatch). A primary modality with other than 3 channels gets the RGB stem
    adapted as for ``cmx``. The head's fusion conv has no bias in DELIVER: nothing is folded.
``cmx``
    The CMX ``EncoderDecoder`` (https://github.com/huaaaliu/RGBX_Semantic_Segmentation): ``backbone.*`` =
    ``RGBXTransformer`` (``patch_embed1-4``, ``block1-4``, ``norm1-4`` for RGB, ``extra_*`` for X, ``FRMs.0-3``,
    ``FFMs.0-3``) and ``decode_head.*`` = its MLP ``DecoderHead``, into a ``cmx`` fusion model with two modalities
    and the ``mlp`` head with ``head_channels`` = the checkpoint's ``decoder_embed_dim`` (512 in every CMX config).
    The RGB path goes to the first modality (``rgb`` must be listed first when present), X to the second. X is
    3-channel in the reference (a 1-channel image repeated 3 times): for a 1-channel modality the first conv's
    weight is summed over its input channels (:func:`~rgbx.models.weights.adapt_conv_weight`), which is exact
    for such an input. The decoder's fusion conv has a bias followed by BatchNorm, rgbx's has none: the bias is
    folded into the BatchNorm running mean (``μ' = μ − b``; exact in eval mode, and irrelevant in training mode).
    CMX trains the decode head with BatchNorm eps 1e-3 but evaluates (``eval.py``, ``criterion=None``) with
    PyTorch's 1e-5, which is what rgbx's head uses.
``dformer``
    Released DFormer (v1) checkpoints (https://github.com/VCIP-RGBD/DFormer): ``backbone.*`` (names already equal
    rgbx's ``dformer_*`` encoder's) into a ``dformer`` fusion, ``decode_head.*`` (``LightHamHead``) into the
    ``ham`` head. DFormer's training code sets the decode head's BatchNorm eps to 1e-3 and its released checkpoints
    were evaluated that way: build the model with ``head_options={"bn_eps": 1e-3}`` (``rgbx convert`` does so
    for this layout unless ``--head-option bn_eps=...`` is given); the report notes it otherwise. An
    ImageNet-pretrained DFormer encoder (keys without ``backbone.``; its classifier ``head.*`` is dropped) fills
    the encoder only.
``dformerv2``
    Released DFormerv2 checkpoints (same repository; told apart by the geometry priors' ``layers.i.blocks.j.Geo.*``
    tensors): ``backbone.*`` (names equal rgbx's ``dformerv2_*`` encoder's, the priors' ``angle`` / ``decay``
    buffers included) into a ``dformerv2`` fusion, ``decode_head.*`` into the ``ham`` head, as for ``dformer``
    (head BatchNorm eps 1e-3). DFormerv2's builder leaves ``LightHamHead``'s ``ham_channels`` at 512 whatever the
    head's ``channels`` (1024 for L): a head whose widths differ is built with ``head_options={"ham_channels":
    ...}`` (read off the file by :func:`infer_model_options`).
``segformer-hf``, ``segformer-mmseg``, ``segformer-nvlabs``
    SegFormer / MiT encoders (ImageNet-pretrained or segmentation checkpoints) in the layouts of Hugging Face
    transformers (``SegformerModel`` / ``...ForSemanticSegmentation`` / ``...ForImageClassification``, both the
    ``encoder.block.*`` names of the released checkpoints and the ``stages.*`` names of transformers ≥ 5),
    mmsegmentation (``MixVisionTransformer``: ``layers.i.0`` patch embedding, ``layers.i.1.j`` blocks with packed
    q/k/v ``attn.attn.in_proj_*`` split into ``attn.q`` + ``attn.kv`` and 1×1-conv FFN weights reshaped to
    Linear, ``layers.i.2`` stage norm) and NVlabs SegFormer (``patch_embed1``, ``block1.0``, ``norm1``; the names
    CMX copied). They go into every MiT encoder of the model: a ``mean`` / ``ktb`` model's shared encoder (and
    its per-modality stems), or each branch of a ``cmx`` model — ``branches`` picks the modalities whose
    branch / stem receive them (default all). The first conv is adapted to each modality's channels as above
    (exact for 1 channel fed a repeated image; an approximation otherwise, noted in the report). A SegFormer
    decode head in the file (NVlabs / Hugging Face ``decode_head.*``) goes into an ``mlp`` head; mmsegmentation's
    ``SegformerHead`` (1×1 ConvModules with BatchNorm per stage) has no rgbx counterpart: ``ignore`` it.
    ImageNet classifiers (``head.*``, ``classifier.*``) and mmseg's unused ``decode_head.conv_seg`` are dropped.

Strictness: after mapping, every tensor of the parts the layout fills (the whole model for ``cmnext`` / ``cmx`` /
``dformer`` / ``dformerv2``; the targeted encoders, stems and, when mapped, the head for the SegFormer layouts) must be filled,
every checkpoint tensor must be used (or left out on purpose: the ``ignore`` prefixes and the drops named above, all
listed in the report), and every shape must match; otherwise one :class:`~rgbx.errors.CheckpointError` lists every
missing, unused, unexpected and mis-shaped tensor with its shapes. BatchNorm ``num_batches_tracked`` counters are
the only tensors that may be missing on either side. Parts outside the layout's scope (e.g. CMX's fusion modules
when only MiT weights are loaded) keep their initialisation and are listed in the report.

Numerical caveats of the SegFormer layouts (the weights are the same, the arithmetic around them differs
slightly): rgbx's MiT follows NVlabs (block / stage LayerNorm eps 1e-6, patch-embedding and reduction LayerNorm
eps 1e-5); mmsegmentation uses eps 1e-6 for all of them and Hugging Face 1e-5 for all of them.

Input encoding: released weights expect the input their own code fed them (CMX and DFormer: blue-first RGB; DFormer's
depth scale; CMX's one-channel X merged to three ImageNet-normalised channels; DELIVER's sensors / 255).
:func:`reference_input_encoding` gives the ``model.input_encoding`` (:mod:`rgbx.models.input_encoding`) that maps
rgbx's inputs to it, exactly; ``rgbx convert`` stores it with the model unless asked not to. Build the model with it
before converting: a CMX thermal branch then keeps its released three-channel first conv.

Reading files: ``.safetensors`` or ``torch.save`` files read with ``torch.load(weights_only=True)`` (no code is
unpickled); ``state_dict_ema`` / ``state_dict`` / ``model`` / ``module`` wrappers are unwrapped and a ``module.``
(DataParallel) key prefix is stripped.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rgbx.errors import CheckpointError
from rgbx.modalities import get_modality
from rgbx.models.backbones.mit import original_key_to_rgbx
from rgbx.models.weights import read_weights_file

__all__ = [
    "LAYOUTS",
    "MIT_ARCHS",
    "ConversionReport",
    "Layout",
    "convert_checkpoint",
    "detect_layout",
    "infer_model_options",
    "read_checkpoint",
    "unwrap_state_dict",
]

WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model", "module")

# MiT variants: (embed dims, depths) → the rgbx backbone name (used to read a checkpoint's variant).
MIT_ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mit_nano": ((16, 32, 64, 128), (1, 1, 1, 1)),
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


# --------------------------------------------------------------------------------------------------------------
# Reading


def unwrap_state_dict(obj, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside ``obj``: nested ``state_dict_ema`` / ``state_dict`` / ``model`` / ``module`` wrappers
    are unwrapped (in that order of preference) and a ``module.`` key prefix is stripped. Returns (state, notes)."""
    notes: list[str] = []
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            shown = ", ".join(map(repr, list(obj)[:8]))
            raise CheckpointError(
                f"{source}: not a state dict: its top-level entries ({shown}) are not all tensors and none of "
                f"{', '.join(map(repr, WRAPPER_KEYS))} holds one"
            )
        obj = obj[key]
        notes.append(f"unwrapped the checkpoint's {key!r} entry")
    else:
        raise CheckpointError(f"{source}: no state dict found within 4 levels of wrappers")
    state = {str(k): v for k, v in obj.items()}
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
        notes.append("stripped the 'module.' key prefix")
    return state, notes


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A checkpoint file's state dict (see :func:`unwrap_state_dict`): ``.safetensors``, or a ``torch.save`` file
    read with ``torch.load(weights_only=True)`` (tensors, containers, numbers, strings and argparse namespaces
    only; no code is unpickled). Returns (state, notes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    obj = read_weights_file(path, safe_globals=(argparse.Namespace,))
    return unwrap_state_dict(obj, str(path))


# --------------------------------------------------------------------------------------------------------------
# Mapping bookkeeping


class _Mapper:
    """Collects ``rgbx name → tensor`` with the checkpoint keys each came from, and what was used / dropped."""

    def __init__(self, state: Mapping[str, torch.Tensor], model: nn.Module):
        self.state = dict(state)
        self.model = model
        self.model_state = model.state_dict()
        self.tensors: dict[str, torch.Tensor] = {}
        self.sources: dict[str, tuple[str, ...]] = {}
        self.used: set[str] = set()
        self.dropped: dict[str, str] = {}
        self.notes: list[str] = []
        self.scope: list[str] = []
        self.conflicts: list[str] = []

    def keys(self) -> list[str]:
        """Checkpoint keys not dropped."""
        return [k for k in self.state if k not in self.dropped]

    def get(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.state[key]

    def drop(self, key: str, reason: str) -> None:
        if key not in self.used:
            self.dropped.setdefault(key, reason)

    def put(self, target: str, tensor: torch.Tensor, sources: Sequence[str]) -> None:
        if target in self.tensors:
            self.conflicts.append(f"{target}: from {', '.join(self.sources[target])} and again from "
                                  f"{', '.join(sources)}")
        self.tensors[target] = tensor
        self.sources[target] = tuple(sources)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# A canonical MiT encoder: rgbx ``MixTransformer``-relative name → (tensor, checkpoint keys).
_Canon = dict[str, tuple[torch.Tensor, tuple[str, ...]]]

def _parse_nvlabs_encoder(m: _Mapper) -> _Canon:
    """``patch_embed1.*``, ``block1.0.*``, ``norm1.*`` (optionally under ``backbone.``): block internals already
    have rgbx's names (:func:`rgbx.models.backbones.mit.original_key_to_rgbx`)."""
    canon: _Canon = {}
    for key in m.keys():
        name = original_key_to_rgbx(key.removeprefix("backbone."))
        if name is not None:
            canon[name] = (m.get(key), (key,))
    return canon


_MMSEG_LAYER = re.compile(r"^(?:backbone\.)?layers\.(\d+)\.(\d+)\.(.+)$")
_MMSEG_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.attn.out_proj": "attn.proj",
    "attn.sr": "attn.sr",
    "attn.norm": "attn.norm",
    "ffn.layers.0": "mlp.fc1",  # 1×1 conv → Linear
    "ffn.layers.1": "mlp.dwconv.dwconv",
    "ffn.layers.4": "mlp.fc2",  # 1×1 conv → Linear
}


def _linear_from_conv1x1(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1]) if t.dim() == 4 and t.shape[2:] == (1, 1) else t


def _parse_mmseg_encoder(m: _Mapper) -> _Canon:
    """mmsegmentation ``MixVisionTransformer``: ``layers.i.0`` = ``PatchEmbed`` (``projection``, ``norm``),
    ``layers.i.1.j`` = blocks, ``layers.i.2`` = stage norm."""
    canon: _Canon = {}
    for key in m.keys():
        match = _MMSEG_LAYER.match(key)
        if not match:
            continue
        stage, part, rest = int(match.group(1)), match.group(2), match.group(3)
        prefix = f"stages.{stage}"
        if part == "0":
            sub, _, leaf = rest.rpartition(".")
            name = {"projection": "proj", "norm": "norm"}.get(sub)
            if name:
                canon[f"{prefix}.patch_embed.{name}.{leaf}"] = (m.get(key), (key,))
        elif part == "2":
            canon[f"{prefix}.norm.{rest}"] = (m.get(key), (key,))
        elif part == "1":
            block, _, inner = rest.partition(".")
            sub, _, leaf = inner.rpartition(".")
            if sub == "attn.attn" and leaf in ("in_proj_weight", "in_proj_bias"):
                packed = m.get(key)  # rows: q, k, v (nn.MultiheadAttention)
                dim = packed.shape[0] // 3
                kind = "weight" if leaf == "in_proj_weight" else "bias"
                canon[f"{prefix}.blocks.{block}.attn.q.{kind}"] = (packed[:dim], (key,))
                canon[f"{prefix}.blocks.{block}.attn.kv.{kind}"] = (packed[dim:], (key,))  # k then v, as rgbx's kv
            elif sub in _MMSEG_BLOCK:
                value = m.get(key)
                if sub in ("ffn.layers.0", "ffn.layers.4"):
                    value = _linear_from_conv1x1(value)
                canon[f"{prefix}.blocks.{block}.{_MMSEG_BLOCK[sub]}.{leaf}"] = (value, (key,))
    return canon


_HF_LEGACY_EMBED = re.compile(r"^(?:segformer\.)?encoder\.patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)$")
_HF_LEGACY_BLOCK = re.compile(r"^(?:segformer\.)?encoder\.block\.(\d+)\.(\d+)\.(.+)\.(\w+)$")
_HF_LEGACY_NORM = re.compile(r"^(?:segformer\.)?encoder\.layer_norm\.(\d+)\.(\w+)$")
_HF_V5_EMBED = re.compile(r"^(?:segformer\.)?stages\.(\d+)\.patch_embeddings\.(proj|layer_norm)\.(\w+)$")
_HF_V5_BLOCK = re.compile(r"^(?:segformer\.)?stages\.(\d+)\.blocks\.(\d+)\.(.+)\.(\w+)$")
_HF_V5_NORM = re.compile(r"^(?:segformer\.)?stages\.(\d+)\.layer_norm\.(\w+)$")
_HF_BLOCK = {
    # transformers < 5 (the released checkpoints)
    "layer_norm_1": "norm1",
    "layer_norm_2": "norm2",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "mlp.dense1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
    # transformers >= 5
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_proj": "attn.q",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    # both
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}
_HF_KEY_VALUE = {"attention.self.key": "k", "attention.self.value": "v", "attention.k_proj": "k",
                 "attention.v_proj": "v"}


def _parse_hf_encoder(m: _Mapper) -> _Canon:
    """Hugging Face ``SegformerModel`` (optionally under ``segformer.``); separate key / value Linears are
    concatenated into rgbx's ``attn.kv`` (rows: keys, then values)."""
    canon: _Canon = {}
    kv: dict[str, dict[str, str]] = {}
    for key in m.keys():
        if match := (_HF_LEGACY_EMBED.match(key) or _HF_V5_EMBED.match(key)):
            stage, part, leaf = match.groups()
            canon[f"stages.{stage}.patch_embed.{'proj' if part == 'proj' else 'norm'}.{leaf}"] = (m.get(key), (key,))
        elif match := (_HF_LEGACY_NORM.match(key) or _HF_V5_NORM.match(key)):
            stage, leaf = match.groups()
            canon[f"stages.{stage}.norm.{leaf}"] = (m.get(key), (key,))
        elif match := (_HF_LEGACY_BLOCK.match(key) or _HF_V5_BLOCK.match(key)):
            stage, block, sub, leaf = match.groups()
            if sub in _HF_BLOCK:
                canon[f"stages.{stage}.blocks.{block}.{_HF_BLOCK[sub]}.{leaf}"] = (m.get(key), (key,))
            elif sub in _HF_KEY_VALUE:
                kv.setdefault(f"stages.{stage}.blocks.{block}.attn.kv.{leaf}", {})[_HF_KEY_VALUE[sub]] = key
    for name, parts in kv.items():
        if set(parts) == {"k", "v"}:  # a lone key or value Linear stays unused and is reported
            canon[name] = (torch.cat([m.get(parts["k"]), m.get(parts["v"])], dim=0), (parts["k"], parts["v"]))
    return canon


# --------------------------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class _MiTTarget:
    """A MiT encoder in the model (``prefix`` ends with a dot or is empty) or a stand-alone stem."""

    prefix: str
    modality: str | None  # the modality of a per-modality branch / stem; None for a shared encoder
    stem_only: bool  # an OverlapPatchEmbed outside every MixTransformer (a per-modality first stage embedding)
    has_stem: bool  # a MixTransformer with its own first patch embedding


def _mit_targets(model: nn.Module, branches: Sequence[str] | None) -> list[_MiTTarget]:
    from rgbx.models.backbones.mit import MixTransformer, OverlapPatchEmbed

    modalities = list(getattr(getattr(model, "encoder", None), "modalities", ()) or ())
    encoders: list[tuple[str, MixTransformer]] = []
    stems: list[tuple[str, OverlapPatchEmbed]] = []
    for name, module in model.named_modules():
        inside = any(p == "" or name == p or name.startswith(p + ".") for p, _ in encoders)
        if isinstance(module, MixTransformer) and not inside:
            encoders.append((name, module))
        elif isinstance(module, OverlapPatchEmbed) and not inside:
            stems.append((name, module))
    if not encoders:
        raise CheckpointError(
            "a SegFormer / MiT checkpoint needs a model with a MiT backbone (mit_b0 ... mit_b5); this model has "
            "none"
        )
    targets = []
    for name, module in encoders:
        last = name.rpartition(".")[2]
        modality = last if last in modalities else None
        targets.append(_MiTTarget(f"{name}." if name else "", modality, False, module.stages[0].patch_embed
                                  is not None))
    first_dim = encoders[0][1].arch.embed_dims[0]
    for name, module in stems:
        if module.proj.out_channels != first_dim:
            continue
        last = name.rpartition(".")[2]
        targets.append(_MiTTarget(f"{name}.", last if last in modalities else None, True, False))
    if branches:
        unknown = sorted(set(branches) - set(modalities))
        if unknown:
            raise CheckpointError(
                f"branches {unknown} are not modalities of this model ({', '.join(modalities) or 'none'})"
            )
        targets = [t for t in targets if t.modality is None or t.modality in branches]
    return targets


def _put_first_conv(m: _Mapper, target: str, tensor: torch.Tensor, sources: tuple[str, ...], what: str) -> None:
    """The first conv's weight, adapted to the target's input channels when they differ."""
    from rgbx.models.weights import adapt_conv_weight

    own = m.model_state.get(target)
    if (own is not None and tensor.dim() == 4 and own.dim() == 4 and own.shape[1] != tensor.shape[1]
            and own.shape[0] == tensor.shape[0] and own.shape[2:] == tensor.shape[2:]):
        c_in, c_out = tensor.shape[1], own.shape[1]
        tensor = adapt_conv_weight(tensor, c_out)
        how = ("summed over its input channels (exact for a 1-channel image repeated to "
               f"{c_in} channels)") if c_out == 1 else (
            f"repeated cyclically and scaled by {c_in}/{c_out} (an approximation)")
        m.note(f"{what}: first conv {sources[0]} ({c_in} input channels) → {target} ({c_out}): {how}")
    m.put(target, tensor, sources)


def _put_mit(m: _Mapper, canon: _Canon, target: _MiTTarget, what: str) -> None:
    """Write a canonical MiT encoder into one target (a MixTransformer, or only its first patch embedding into a
    stand-alone stem)."""
    stem_prefix = "stages.0.patch_embed."
    for name, (tensor, sources) in canon.items():
        if name.startswith(stem_prefix):
            if target.stem_only:
                dest = target.prefix + name.removeprefix(stem_prefix)
            elif target.has_stem:
                dest = target.prefix + name
            else:
                continue  # a stem-less shared encoder: the stems get the first patch embedding
            if dest.endswith("proj.weight"):
                _put_first_conv(m, dest, tensor, sources, what)
            else:
                m.put(dest, tensor, sources)
        elif not target.stem_only:
            m.put(target.prefix + name, tensor, sources)


# --------------------------------------------------------------------------------------------------------------
# SegFormer-style MLP decode heads → rgbx ``mlp`` head


def _put_mlp_head(m: _Mapper, rules: Sequence[tuple[re.Pattern, str]], fuse_bias: str | None,
                  drop: Iterable[str] = ()) -> bool:
    """Map ``decode_head.*`` keys by ``rules`` (pattern → rgbx ``mlp`` head name) into ``head.*``; fold the fusion
    conv's bias (key ``fuse_bias``) into the BatchNorm running mean. Returns whether a head was mapped."""
    from rgbx.models.heads.mlp import MLPHead

    for key in m.keys():
        if any(key.startswith(p) for p in drop):
            m.drop(key, "unused by the reference's forward (mmseg BaseDecodeHead's conv_seg)")
    keys = [k for k in m.keys() if k.startswith("decode_head.")]
    if not keys:
        return False
    head = getattr(m.model, "head", None)
    if not isinstance(head, MLPHead):
        raise CheckpointError(
            f"the checkpoint has a SegFormer-style MLP decode head ({len(keys)} decode_head.* tensors) but the model's "
            f"head is {type(head).__name__}: build it with --head mlp (head_channels = the checkpoint's embedding "
            "width), or leave the head out with --ignore decode_head."
        )
    for key in keys:
        if key == fuse_bias:
            continue
        for pattern, repl in rules:
            if pattern.match(key):
                m.put("head." + pattern.sub(repl, key), m.get(key), (key,))
                break
    if fuse_bias and fuse_bias in m.state and fuse_bias not in m.dropped:
        mean_key = "head.fuse.1.running_mean"
        if mean_key in m.tensors:
            bias = m.get(fuse_bias)
            mean = m.tensors[mean_key]
            if bias.shape == mean.shape:
                m.tensors[mean_key] = mean - bias
                m.sources[mean_key] = (*m.sources[mean_key], fuse_bias)
                m.note(f"{fuse_bias} (conv bias before BatchNorm) folded into head.fuse.1.running_mean "
                       "(running_mean − bias; exact in eval mode)")
    m.scope.append("head.")
    return True


def _linear_rule(pattern: str, offset: int) -> tuple[re.Pattern, Callable]:
    return re.compile(pattern), lambda match: f"linear.{int(match.group(1)) - offset}.{match.group(2)}"


_NVLABS_HEAD = (
    _linear_rule(r"^decode_head\.linear_c([1-4])\.proj\.(\w+)$", 1),
    (re.compile(r"^decode_head\.linear_fuse\.conv\.weight$"), "fuse.0.weight"),
    (re.compile(r"^decode_head\.linear_fuse\.bn\.(\w+)$"), r"fuse.1.\1"),
    (re.compile(r"^decode_head\.linear_pred\.(\w+)$"), r"classifier.\1"),
)
_CMX_HEAD = (
    _linear_rule(r"^decode_head\.linear_c([1-4])\.proj\.(\w+)$", 1),
    (re.compile(r"^decode_head\.linear_fuse\.0\.weight$"), "fuse.0.weight"),
    (re.compile(r"^decode_head\.linear_fuse\.1\.(\w+)$"), r"fuse.1.\1"),
    (re.compile(r"^decode_head\.linear_pred\.(\w+)$"), r"classifier.\1"),
)
_HF_HEAD = (
    _linear_rule(r"^decode_head\.(?:linear_c|linear_projections)\.(\d)\.proj\.(\w+)$", 0),
    (re.compile(r"^decode_head\.linear_fuse\.weight$"), "fuse.0.weight"),
    (re.compile(r"^decode_head\.batch_norm\.(\w+)$"), r"fuse.1.\1"),
    (re.compile(r"^decode_head\.classifier\.(\w+)$"), r"classifier.\1"),
)


# --------------------------------------------------------------------------------------------------------------
# Layouts


def _segformer(parse: Callable[[_Mapper], _Canon], head_rules, classifier: str, fuse_bias: str | None = None,
               head_drop: Sequence[str] = ()):
    def convert(m: _Mapper, branches: Sequence[str] | None = None) -> None:
        for key in m.keys():
            if key.startswith(classifier):
                m.drop(key, "ImageNet classifier")
        canon = parse(m)
        if not canon:
            raise CheckpointError("no MiT encoder tensors found in the checkpoint")
        for target in _mit_targets(m.model, branches):
            what = f"{target.prefix.rstrip('.') or 'encoder'}"
            _put_mit(m, canon, target, what)
            m.scope.append(target.prefix)
        if head_rules is not None:
            _put_mlp_head(m, head_rules, fuse_bias, head_drop)

    return convert


def _cmx_encoder_key(key: str) -> tuple[str | None, bool]:
    """A CMX ``backbone.[extra_]{patch_embed,block,norm}{n}.*`` key → (the MiT name, whether it is the X path's
    ``extra_`` copy); (None, False) for any other key."""
    if not key.startswith("backbone."):
        return None, False
    rest = key[len("backbone."):]
    extra = rest.startswith("extra_")
    return original_key_to_rgbx(rest.removeprefix("extra_")), extra


_CMX_FUSION = (
    (re.compile(r"^backbone\.FRMs\.(\d+)\.(.+)$"), r"encoder.rectify.\1.\2"),
    (re.compile(r"^backbone\.FFMs\.(\d+)\.channel_emb\.(.+)$"), r"encoder.fuse.\1.channel_emb.\2"),
)
_CMX_CROSS = re.compile(r"^backbone\.FFMs\.(\d+)\.cross\.(channel_proj|end_proj|norm|cross_attn\.kv)([12])\.(\w+)$")


def _convert_cmx(m: _Mapper, branches: Sequence[str] | None = None) -> None:
    from rgbx.models.fusions.cmx import CMXFusion

    encoder = getattr(m.model, "encoder", None)
    if not isinstance(encoder, CMXFusion):
        raise CheckpointError(
            f"a CMX checkpoint needs a model with fusion 'cmx' (and head 'mlp'); this model's encoder is "
            f"{type(encoder).__name__}"
        )
    mods = list(encoder.modalities)
    if len(mods) != 2:
        raise CheckpointError(f"a CMX checkpoint has two paths (RGB and X); the model has {len(mods)} modalities "
                              f"({', '.join(mods)})")
    if "rgb" in mods and mods[0] != "rgb":
        raise CheckpointError(f"list 'rgb' first: the checkpoint's RGB path goes to the first modality (model "
                              f"modalities: {', '.join(mods)})")
    if branches and set(branches) != set(mods):
        raise CheckpointError("the cmx layout fills both branches; 'branches' is for the SegFormer layouts")
    from rgbx.models.backbones.mit import MixTransformer

    if not all(isinstance(b, MixTransformer) for b in encoder.branches.values()):
        raise CheckpointError("a CMX checkpoint with SegFormer branches needs a MiT backbone (mit_b0 ... mit_b5)")
    rgb_canon: _Canon = {}
    x_canon: _Canon = {}
    for key in m.keys():
        name, extra = _cmx_encoder_key(key)
        if name is not None:
            (x_canon if extra else rgb_canon)[name] = (m.get(key), (key,))
            continue
        for pattern, repl in _CMX_FUSION:
            if pattern.match(key):
                m.put(pattern.sub(repl, key), m.get(key), (key,))
                break
        else:
            match = _CMX_CROSS.match(key)
            if match:
                stage, part, path, leaf = match.groups()
                mod = mods[int(path) - 1]
                m.put(f"encoder.fuse.{stage}.cross.{part}.{mod}.{leaf}", m.get(key), (key,))
    for mod, canon in ((mods[0], rgb_canon), (mods[1], x_canon)):
        _put_mit(m, canon, _MiTTarget(f"encoder.branches.{mod}.", mod, False, True),
                 f"{'RGB' if canon is rgb_canon else 'X'} path → {mod}")
    m.scope.append("encoder.")
    _put_mlp_head(m, _CMX_HEAD, "decode_head.linear_fuse.0.bias")


def _convert_joint_rgbd(m: _Mapper, branches: Sequence[str] | None, fusion: type, name: str, layout: str,
                        head_hint: str) -> None:
    """DFormer (v1) and DFormerv2: the encoder's names equal the original's, so keys only lose ``backbone.`` (or, for
    an ImageNet-pretrained file, its classifier); the LightHamHead goes to the ``ham`` head. ``fusion``: the fusion
    class the model must have; ``name`` / ``layout``: for messages; ``head_hint``: how to build a head that takes
    the file's."""
    from rgbx.models.heads.ham import LightHamHead

    encoder = getattr(m.model, "encoder", None)
    if not isinstance(encoder, fusion):
        raise CheckpointError(
            f"a {name} checkpoint needs a model with fusion '{layout}' and a {layout}_* backbone (and head 'ham'); "
            f"this model's encoder is {type(encoder).__name__}"
        )
    if branches:
        raise CheckpointError(f"the {layout} layout fills the joint encoder; 'branches' is for the SegFormer layouts")
    keys = m.keys()
    segmentation = any(k.startswith("backbone.") for k in keys)
    for key in keys:
        if segmentation and key.startswith("backbone."):
            m.put("encoder.encoder." + key.removeprefix("backbone."), m.get(key), (key,))
        elif not segmentation and key.startswith("head."):
            m.drop(key, "ImageNet classifier")
        elif not segmentation and not key.startswith(("decode_head.", "aux_head.")):
            m.put("encoder.encoder." + key, m.get(key), (key,))
    m.scope.append("encoder.")
    head_keys = [k for k in m.keys() if k.startswith("decode_head.")]
    if not head_keys:
        return
    head = getattr(m.model, "head", None)
    if not isinstance(head, LightHamHead):
        raise CheckpointError(
            f"the checkpoint has {name}'s LightHamHead ({len(head_keys)} decode_head.* tensors) but the model's "
            f"head is {type(head).__name__}: build it with --head ham {head_hint}, or leave the head out with "
            "--ignore decode_head."
        )
    for key in head_keys:
        m.put("head." + key.removeprefix("decode_head."), m.get(key), (key,))
    m.scope.append("head.")
    eps = {float(b.eps) for b in head.modules() if isinstance(b, nn.BatchNorm2d)}
    if eps != {1e-3}:
        m.note(f"{name}'s released heads were trained and evaluated with BatchNorm eps 1e-3; this model's ham "
               f"head uses {', '.join(f'{e:g}' for e in sorted(eps))}: build it with head_options="
               "{'bn_eps': 1e-3} (rgbx convert: --head-option bn_eps=1e-3) to reproduce the reference")


def _convert_dformer(m: _Mapper, branches: Sequence[str] | None = None) -> None:
    from rgbx.models.fusions.dformer import DFormerFusion

    _convert_joint_rgbd(m, branches, DFormerFusion, "DFormer", "dformer",
                        "--head-channels 512 (and head_options bn_eps=1e-3)")


def _convert_dformerv2(m: _Mapper, branches: Sequence[str] | None = None) -> None:
    from rgbx.models.fusions.dformerv2 import DFormerv2Fusion

    _convert_joint_rgbd(m, branches, DFormerv2Fusion, "DFormerv2", "dformerv2",
                        "and the file's head channels (512, or 1024 with head_options ham_channels=512)")


_CMNEXT_SUPPLEMENTARY_INDEX = re.compile(
    r"^(?:backbone\.)?extra_(?:downsample_layers\.\d+\.norm\.ln_|score_predictor\.\d+\.score_nets\.)(\d+)\.")
# DELIVER's configs list the supplementary modalities in this order (rgbx uses the same names)
_DELIVER_ORDER = ("depth", "event", "lidar")


def _cmnext_order(encoder, modality_order: Sequence[str] | None) -> tuple[str, ...]:
    """The checkpoint's modalities in its own order (primary first), checked against the model."""
    if modality_order is None:
        return (encoder.primary, *encoder.supplementary_modalities)
    order = tuple(modality_order)
    if sorted(order) != sorted(encoder.modalities) or len(set(order)) != len(order):
        raise CheckpointError(
            f"modality_order {list(order)} must list each of the model's modalities ({', '.join(encoder.modalities)}) "
            "once, in the checkpoint's order"
        )
    if order[0] != encoder.primary:
        raise CheckpointError(
            f"modality_order must start with the model's primary modality {encoder.primary!r} (the checkpoint's "
            f"'img' path), got {list(order)}"
        )
    return order


def _convert_cmnext(m: _Mapper, branches: Sequence[str] | None = None,
                    modality_order: Sequence[str] | None = None) -> None:
    from rgbx.models.fusions.cmnext import CMNeXtFusion, cmnext_key_map
    from rgbx.models.heads.mlp import MLPHead

    encoder = getattr(m.model, "encoder", None)
    if not isinstance(encoder, CMNeXtFusion):
        raise CheckpointError(
            f"a CMNeXt checkpoint needs a model with fusion 'cmnext' (a mit_* backbone, and head 'mlp'); this "
            f"model's encoder is {type(encoder).__name__}"
        )
    if branches:
        raise CheckpointError("the cmnext layout fills the whole encoder; 'branches' is for the SegFormer layouts")
    order = _cmnext_order(encoder, modality_order)
    keys = m.keys()
    indices = {int(match.group(1)) for k in keys if (match := _CMNEXT_SUPPLEMENTARY_INDEX.match(k))}
    if indices and max(indices) + 1 != len(order) - 1:
        count = max(indices) + 1
        raise CheckpointError(
            f"the checkpoint has {count} supplementary modalit{'y' if count == 1 else 'ies'} (per-modality modules "
            f"0 ... {count - 1}) besides its 'img' path; the model has {len(order) - 1} "
            f"({', '.join(order[1:])}): build it with the checkpoint's modalities, primary first (DELIVER's "
            "RGB-D-E-L model: --modalities rgb depth event lidar)"
        )
    segmentation = any(k.startswith(("backbone.", "decode_head.")) for k in keys)
    head_keys = []
    for key in keys:
        if segmentation and not key.startswith(("backbone.", "decode_head.")):
            continue  # left unused (and reported) unless ignored
        ((target, _),) = cmnext_key_map({key: m.state[key]}, order).items()
        if target == key:
            continue  # not a CMNeXt name: left unused (and reported)
        if not segmentation:
            target = "encoder." + target  # a backbone state dict: CMNeXtFusion names
        if key.startswith("decode_head."):
            head_keys.append(key)
            continue
        if target == "encoder.backbone.stages.0.patch_embed.proj.weight":
            _put_first_conv(m, target, m.get(key), (key,), f"'img' path → {order[0]}")
        else:
            m.put(target, m.get(key), (key,))
    m.scope.append("encoder.")
    m.note("checkpoint modalities (its per-modality modules 0, 1, ...): 'img' → "
           + ", ".join([order[0], *(f"{k} → {mod}" for k, mod in enumerate(order[1:]))]))
    known = [mod for mod in order[1:] if mod in _DELIVER_ORDER]
    if modality_order is None and known != sorted(known, key=_DELIVER_ORDER.index):
        m.note(f"DELIVER's configs list these modalities as {', '.join(sorted(known, key=_DELIVER_ORDER.index))}; "
               "if the checkpoint comes from them, pass modality_order (rgbx convert --modality-order)")
    if head_keys:
        head = getattr(m.model, "head", None)
        if not isinstance(head, MLPHead):
            raise CheckpointError(
                f"the checkpoint has CMNeXt's SegFormer decode head ({len(head_keys)} decode_head.* tensors) but the "
                f"model's head is {type(head).__name__}: build it with --head mlp --head-channels 512 (the "
                "checkpoint's embedding width), or leave the head out with --ignore decode_head."
            )
        for key in head_keys:
            ((target, _),) = cmnext_key_map({key: m.state[key]}, order).items()
            m.put(target, m.get(key), (key,))
        m.scope.append("head.")


def _has(pattern: str) -> Callable[[Iterable[str]], bool]:
    regex = re.compile(pattern)
    return lambda keys: any(regex.search(k) for k in keys)


def _detect_cmnext(keys: Iterable[str]) -> bool:
    """CMNeXt's supplementary embeddings, or its hub scores without the extra_patch_embed of DELIVER's own CMX."""
    keys = list(keys)
    return _has(r"(^|\.)extra_downsample_layers\.\d+\.")(keys) or (
        _has(r"(^|\.)extra_score_predictor\.\d+\.score_nets\.")(keys)
        and not _has(r"(^|\.)extra_patch_embed1\.")(keys)
    )


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: ``detect(keys)`` says whether key names look like it; ``convert(mapper, branches)``
    fills the mapping (see :func:`convert_checkpoint`; ``cmnext`` also takes ``modality_order``)."""

    name: str
    description: str
    detect: Callable[[Iterable[str]], bool]
    convert: Callable[..., None]


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        # before cmx: CMNeXt checkpoints also hold FRMs / FFMs; DELIVER's own CMX backbone has extra_score_predictor
        # too, but with extra_patch_embed
        Layout("cmnext", "DELIVER CMNeXt (CMNeXt backbone + SegFormerHead)", _detect_cmnext, _convert_cmnext),
        Layout("cmx", "CMX EncoderDecoder (RGBXTransformer backbone + MLP DecoderHead)",
               _has(r"^backbone\.(extra_patch_embed1\.|FRMs\.0\.|FFMs\.0\.)"), _convert_cmx),
        Layout("dformer", "DFormer (v1) encoder (+ LightHamHead)", _has(r"(^|\.)downsample_layers_e\.0\."),
               _convert_dformer),
        Layout("dformerv2", "DFormerv2 encoder (+ LightHamHead)", _has(r"(^|\.)layers\.\d+\.blocks\.\d+\.Geo\."),
               _convert_dformerv2),
        Layout("segformer-hf", "Hugging Face transformers SegformerModel / ...ForSemanticSegmentation",
               _has(r"(^|\.)(encoder\.patch_embeddings|stages)\.0\.(patch_embeddings\.)?proj\.weight$"),
               _segformer(_parse_hf_encoder, _HF_HEAD, "classifier.")),
        Layout("segformer-mmseg", "mmsegmentation MixVisionTransformer", _has(r"(^|\.)layers\.0\.0\.projection\.weight$"),
               _segformer(_parse_mmseg_encoder, None, "head.")),
        Layout("segformer-nvlabs", "NVlabs SegFormer MiT (ImageNet or segmentation checkpoint)",
               _has(r"^(backbone\.)?patch_embed1\.proj\.weight$"),
               _segformer(_parse_nvlabs_encoder, _NVLABS_HEAD, "head.", head_drop=("decode_head.conv_seg.",))),
    )
}


def detect_layout(keys: Iterable[str]) -> str:
    """The first layout of :data:`LAYOUTS` whose key names match ``keys``; a CheckpointError if none does."""
    keys = list(keys)
    for name, layout in LAYOUTS.items():
        if layout.detect(keys):
            return name
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    raise CheckpointError(
        f"cannot tell the checkpoint's layout from its key names ({len(keys)} tensors: {shown}); known layouts: "
        + "; ".join(f"{n} ({layout.description})" for n, layout in LAYOUTS.items())
    )


# --------------------------------------------------------------------------------------------------------------
# Checking, loading, reporting


@dataclass
class ConversionReport:
    """What :func:`convert_checkpoint` did.

    Attributes:
        layout: the layout used.
        source: the file (or ``"<state dict>"``).
        mapping: rgbx name → the checkpoint key(s) it was made from.
        dropped: checkpoint key → why it was left out on purpose.
        kept: rgbx tensors outside the layout's scope, left at their initialisation.
        notes: conversions worth knowing (first-conv adaptation, folded biases, eps advice, unwrapping).
        parameters_filled / parameters_total: parameter elements written / in the model (buffers not counted).
    """

    layout: str
    source: str
    mapping: dict[str, tuple[str, ...]]
    dropped: dict[str, str]
    kept: list[str]
    notes: list[str]
    parameters_filled: int
    parameters_total: int
    checkpoint_tensors: int = 0

    @property
    def tensors_mapped(self) -> int:
        return len(self.mapping)

    def summary(self) -> str:
        used = len({k for keys in self.mapping.values() for k in keys})
        lines = [
            f"layout {self.layout}: {self.checkpoint_tensors} checkpoint tensors, {used} used, "
            f"{len(self.dropped)} left out on purpose; {self.tensors_mapped} rgbx tensors written",
            f"parameters filled: {self.parameters_filled:,} of {self.parameters_total:,} "
            f"({self.parameters_filled / max(self.parameters_total, 1):.1%})",
        ]
        if self.dropped:
            reasons: dict[str, int] = {}
            for reason in self.dropped.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            lines.append("left out: " + "; ".join(f"{n} × {r}" for r, n in reasons.items()))
        if self.kept:
            groups = sorted({".".join(k.split(".")[:3]) for k in self.kept})
            shown = ", ".join(groups[:6]) + (f", ... ({len(groups)} groups)" if len(groups) > 6 else "")
            lines.append(f"kept at initialisation: {len(self.kept)} tensors ({shown})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _check(m: _Mapper) -> list[str]:
    """Every problem, one line each (empty when the mapping fits the model)."""
    own = m.model_state
    for key in m.state:  # BatchNorm counters may be absent on either side
        if key.endswith("num_batches_tracked") and key not in m.used:
            m.drop(key, "BatchNorm counter")
    for target in [t for t in m.tensors if t.endswith("num_batches_tracked") and t not in own]:
        for key in m.sources.pop(target):
            m.used.discard(key)
            m.drop(key, "BatchNorm counter")
        del m.tensors[target]
    scope = tuple(m.scope)
    missing = [f"{k} {_shape(v)}" for k, v in own.items()
               if k.startswith(scope) and k not in m.tensors and not k.endswith("num_batches_tracked")]
    unused = [f"{k} {_shape(v)}" for k, v in m.state.items() if k not in m.used and k not in m.dropped]
    unexpected = [f"{t} ← {', '.join(m.sources[t])} {_shape(v)}" for t, v in m.tensors.items() if t not in own]
    mismatched = [f"{t} ← {', '.join(m.sources[t])}: model expects {_shape(own[t])}, checkpoint gives {_shape(v)}"
                  for t, v in m.tensors.items() if t in own and own[t].shape != v.shape]
    problems = []
    for title, items in (
        ("missing (model tensors the checkpoint does not fill)", missing),
        ("unused (checkpoint tensors that map to nothing)", unused),
        ("unexpected (mapped names this model does not have)", unexpected),
        ("shape mismatch", mismatched),
        ("filled twice", m.conflicts),
    ):
        if items:
            problems.append(f"{title}: {len(items)}")
            problems.extend(f"  {item}" for item in items)
    if unused:
        problems.append("(checkpoint parts can be left out on purpose with ignore=[prefix, ...] / rgbx convert "
                        "--ignore PREFIX, e.g. decode_head. to load only the encoder)")
    return problems


def convert_checkpoint(
    source: str | Path | Mapping[str, torch.Tensor],
    model: nn.Module,
    layout: str = "auto",
    *,
    branches: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    name: str | None = None,
    modality_order: Sequence[str] | None = None,
) -> ConversionReport:
    """Load a released checkpoint into ``model`` (in place), strictly.

    Args:
        source: a checkpoint file (``.pth`` / ``.pt`` / ``.pth.tar`` / ``.safetensors``) or a state dict (possibly
            wrapped, see :func:`unwrap_state_dict`).
        model: an rgbx :class:`~rgbx.models.Segmentor` of the matching architecture (or, for the SegFormer
            layouts, any module holding MiT encoders, e.g. a bare ``mit_b0``).
        layout: a name of :data:`LAYOUTS` or ``"auto"`` (detected from the key names).
        branches: SegFormer layouts: the modalities whose branch / stem receive the encoder (default all).
        ignore: checkpoint key prefixes to leave out on purpose (e.g. ``"decode_head."`` to load only the encoder,
            ``"aux_head."``); listed in the report.
        name: how to call the source in messages (default: the path, or ``"<state dict>"``).
        modality_order: ``cmnext`` layout: the checkpoint's modalities as rgbx names in the checkpoint's order (its
            ``MODALS``, ``img`` → the model's primary modality, first); default: the model's primary modality, then
            its supplementary ones in their configured order.

    Returns:
        A :class:`ConversionReport`.

    Raises:
        CheckpointError: an unreadable file, an unknown layout, a model the layout does not fit, or any missing /
            unused / unexpected / mis-shaped tensor (all of them listed in one message). The model is unchanged
            when this is raised.
    """
    if isinstance(source, str | Path):
        name = name or str(source)
        state, notes = read_checkpoint(source)
    else:
        name = name or "<state dict>"
        state, notes = unwrap_state_dict(source, name)
    if layout == "auto":
        layout = detect_layout(state)
    elif layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; known: auto, {', '.join(LAYOUTS)}")
    m = _Mapper(state, model)
    for note in notes:
        m.note(note)
    ignore = tuple(ignore)
    for key in state:
        if ignore and key.startswith(ignore):
            m.drop(key, "ignored on request")
    options = {}
    if modality_order is not None:
        if layout != "cmnext":
            raise CheckpointError(f"modality_order is for the cmnext layout, not {layout}")
        options["modality_order"] = list(modality_order)
    LAYOUTS[layout].convert(m, branches=list(branches) if branches else None, **options)
    problems = _check(m)
    if problems:
        raise CheckpointError(f"{name}: the {layout} checkpoint does not fit this model\n  " + "\n  ".join(problems))
    with torch.no_grad():
        own = m.model_state
        for target, tensor in m.tensors.items():
            own[target].copy_(tensor.to(dtype=own[target].dtype))
    scope = tuple(m.scope)
    params = dict(model.named_parameters())
    filled = sum(p.numel() for n, p in params.items() if n in m.tensors)
    kept = [k for k in m.model_state if not k.startswith(scope) and not k.endswith("num_batches_tracked")]
    return ConversionReport(
        layout=layout,
        source=name,
        mapping=dict(m.sources),
        dropped=dict(m.dropped),
        kept=kept,
        notes=list(m.notes),
        parameters_filled=filled,
        parameters_total=sum(p.numel() for p in params.values()),
        checkpoint_tensors=len(state),
    )


# --------------------------------------------------------------------------------------------------------------
# Reading the architecture off a checkpoint (for ``rgbx convert`` defaults)


def _mit_variant(canon: Mapping[str, tuple]) -> str | None:
    dims, depths = [], []
    for stage in range(4):
        proj = canon.get(f"stages.{stage}.patch_embed.proj.weight")
        if proj is None:
            return None
        dims.append(int(proj[0].shape[0]))
        blocks = {int(k.split(".")[3]) for k in canon if k.startswith(f"stages.{stage}.blocks.")}
        depths.append(max(blocks) + 1 if blocks else 0)
    return next((n for n, (d, p) in MIT_ARCHS.items() if (tuple(dims), tuple(depths)) == (d, p)), None)


def infer_model_options(state: Mapping[str, torch.Tensor], layout: str) -> dict:
    """Model config fields that can be read off a checkpoint of ``layout``: ``backbone`` (when it is a known
    variant), ``fusion`` / ``head`` (for ``cmnext`` / ``cmx`` / ``dformer`` / ``dformerv2``; ``cmnext``: the head
    when the file has one), ``head_channels`` and ``num_classes`` (when the file has a decode head), ``head_options``
    (``bn_eps`` 1e-3 for ``dformer`` / ``dformerv2``; ``dformerv2``: ``ham_channels`` too when the head's squeeze
    width differs from its channels). The modalities cannot be read off a file (only how many a ``cmnext`` file has)."""
    from rgbx.models.backbones.dformer import DFORMER_VARIANTS

    probe = _Mapper(state, nn.Module())
    out: dict = {}
    if layout == "cmnext":
        out["fusion"] = "cmnext"
        canon = _parse_nvlabs_encoder(probe)  # the RGB MiT's names (the extra_* branch does not match)
        pred = state.get("decode_head.linear_pred.weight")
        if pred is not None:
            out["head"] = "mlp"
    elif layout == "cmx":
        out.update(fusion="cmx", head="mlp")
        canon = {}
        for key in probe.keys():
            name, extra = _cmx_encoder_key(key)
            if name is not None and not extra:
                canon[name] = (state[key], (key,))
        pred = state.get("decode_head.linear_pred.weight")
    elif layout == "dformer":
        out.update(fusion="dformer", head="ham", head_options={"bn_eps": 1e-3})
        prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
        dims, depths = [], []
        for stage in range(4):
            scale = state.get(f"{prefix}stages.{stage}.0.layer_scale_1")
            blocks = {int(k.split(".")[2 + bool(prefix)]) for k in state if k.startswith(f"{prefix}stages.{stage}.")}
            dims.append(int(scale.numel()) if scale is not None else -1)
            depths.append(max(blocks) + 1 if blocks else 0)
        variant = next((n for n, a in DFORMER_VARIANTS.items() if (a.dims, a.depths) == (tuple(dims), tuple(depths))),
                       None)
        if variant:
            out["backbone"] = variant
        pred = state.get("decode_head.conv_seg.weight")
        canon = None
    elif layout == "dformerv2":
        from rgbx.models.backbones.dformerv2 import DFORMERV2_VARIANTS

        head_options: dict = {"bn_eps": 1e-3}
        out.update(fusion="dformerv2", head="ham", head_options=head_options)
        prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
        dims, depths = [], []
        for stage in range(4):
            norm = state.get(f"{prefix}layers.{stage}.blocks.0.layer_norm1.weight")
            head = f"{prefix}layers.{stage}.blocks."
            blocks = {int(k[len(head):].split(".")[0]) for k in state if k.startswith(head)}
            dims.append(int(norm.numel()) if norm is not None else -1)
            depths.append(max(blocks) + 1 if blocks else 0)
        variant = next((n for n, a in DFORMERV2_VARIANTS.items()
                        if (a.dims, a.depths) == (tuple(dims), tuple(depths))), None)
        if variant:
            out["backbone"] = variant
        pred = state.get("decode_head.conv_seg.weight")
        squeeze = state.get("decode_head.squeeze.conv.weight")
        if pred is not None and squeeze is not None and int(squeeze.shape[0]) != int(pred.shape[1]):
            head_options["ham_channels"] = int(squeeze.shape[0])
        canon = None
    else:
        parse = {"segformer-hf": _parse_hf_encoder, "segformer-mmseg": _parse_mmseg_encoder,
                 "segformer-nvlabs": _parse_nvlabs_encoder}[layout]
        canon = parse(probe)
        pred = state.get("decode_head.linear_pred.weight", state.get("decode_head.classifier.weight"))
        if pred is not None and layout != "segformer-mmseg":
            out["head"] = "mlp"
        else:
            pred = None
    if canon is not None and (variant := _mit_variant(canon)):
        out["backbone"] = variant
    if pred is not None and pred.dim() == 4:
        out["num_classes"], out["head_channels"] = int(pred.shape[0]), int(pred.shape[1])
    return out


# --------------------------------------------------------------------------------------------------------------
# What the reference code bases fed their networks (for ``rgbx convert``'s input encoding)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# DFormer's 8-bit depth v is fed as (v / 255 − 0.48) / 0.28. rgbx's NYU / SUN RGB-D loaders read that file as
# relative depth near + v / 255 · (far − near) metres, by default from 0.5 to 10 m (``relative_depth_range``), so in
# metres DFormer's normalisation is mean near + 0.48 · (far − near), std 0.28 · (far − near).
_DFORMER_DEPTH = (0.48, 0.28)
_RELATIVE_DEPTH_RANGE = (0.5, 10.0)
# MCubeS's polarisation arrays as DELIVER's semseg/datasets/mcubes.py feeds them: as stored, AoLP stacked
# [sin, cos, sin], DoLP repeated to three channels (a 1-channel encoding: the converted conv sums the three kernels)
_MCUBES_AS_STORED = {"aolp": {"source": [0, 1, 0], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
                     "dolp": {"mean": [0.0], "std": [1.0]}}


def _opencv_image_encoding(modality: str) -> dict | None:
    """An 8-bit image read with ``cv2.imread`` (blue first; a one-channel image repeated three times, as CMX's
    ``cv2.merge``) and normalised with ImageNet's statistics: the input of CMX's and DFormer's RGB path and CMX's X
    path. None when rgbx's sensor is not such an image (its physical value is not the file value / 255)."""
    spec = get_modality(modality)
    if spec.dtype != "uint8" or abs(spec.scale - 1 / 255) > 1e-12 or spec.channels not in (1, 3):
        return None
    source = [2, 1, 0] if spec.channels == 3 else [0, 0, 0]
    return {"source": source, "mean": list(_IMAGENET_MEAN), "std": list(_IMAGENET_STD)}


def reference_input_encoding(layout: str, modalities: Sequence[str],
                             num_classes: int | None = None) -> tuple[dict, list[str]]:
    """The ``model.input_encoding`` (:mod:`rgbx.models.input_encoding`) under which a model converted from a
    ``layout`` checkpoint sees what the checkpoint's own code fed it, and notes on what it could not match.

    * ``cmx``: both paths read with OpenCV, so blue first, and normalised with ImageNet's statistics; a one-channel X
      image (MFNet's thermal) repeated to three channels (``RGBXDataset``: ``cv2.imread`` with
      ``cv2.COLOR_BGR2RGB`` passed as the read flag, which leaves blue first; ``cv2.merge``; ``normalize``).
    * ``dformer``: RGB as for CMX; depth, a one-channel 8-bit image, fed as (v / 255 − 0.48) / 0.28
      (``ValPre``), which in rgbx's metres is mean 5.06, std 2.66 for depth read with the default
      ``relative_depth_range`` (0.5, 10) m.
    * ``dformerv2``: as ``dformer``, except on SUN RGB-D (``num_classes`` 37): there DFormer's ``RGBXDataset`` reads
      the image red first for a DFormerv2 backbone (``rgb_mode = "RGB"``, "some checkpoints are run by BGR and some
      are on RGB"), as rgbx does, so RGB gets no encoding.
    * ``cmnext`` (DELIVER's code, ``augmentations_mm.Normalize``): RGB read in red-green-blue order with ImageNet's
      statistics, as rgbx does; every other sensor as its 8-bit image / 255, without mean or std. So ``hha`` (what
      DELIVER reads for "depth") gets mean 0, std 1, and ``lidar`` (rgbx: the grey level × the loader's
      ``lidar_scale``, default 1) mean 0, std 255; ``event_image`` (the deliver loader's ``event_format=image``) is
      already fed that way. rgbx's ``event`` sensor (positive / negative maps decoded from the rendering) is not
      what DELIVER fed: no per-channel encoding maps it back. MCubeS (``semseg/datasets/mcubes.py``, its own
      transforms): NIR / 255 (or / 65535) as the other image sensors, AoLP and DoLP as stored, AoLP stacked
      ``[sin, cos, sin]`` (``source`` [0, 1, 0], keeping the released three-channel first conv).
    * the SegFormer layouts: ImageNet-pretrained encoders, red-green-blue with ImageNet's statistics, as rgbx.
    """
    encoding: dict = {}
    notes: list[str] = []
    if layout == "cmx":
        for m in modalities:
            enc = _opencv_image_encoding(m)
            if enc is None:
                notes.append(f"input encoding: CMX fed its images as 8-bit files / 255 with ImageNet statistics; "
                             f"rgbx's {m!r} is not an 8-bit image sensor, so it is fed as rgbx normalises it")
            else:
                encoding[m] = enc
    elif layout in ("dformer", "dformerv2"):  # DFormerv2 is trained with DFormer's data loader (utils/dataloader)
        near, far = _RELATIVE_DEPTH_RANGE
        for m in modalities:
            if m == "rgb" and layout == "dformerv2" and num_classes == 37:
                notes.append("input encoding: RGB red first, as DFormer's loader reads SUN RGB-D for DFormerv2")
            elif m == "rgb":
                encoding[m] = _opencv_image_encoding(m)
            elif m == "depth":
                mean, std = _DFORMER_DEPTH
                encoding[m] = {"mean": [round(near + mean * (far - near), 6)], "std": [round(std * (far - near), 6)]}
                notes.append(f"input encoding: depth as DFormer feeds its 8-bit depth PNGs, for depth read with "
                             f"relative_depth_range ({near:g}, {far:g}) m (the NYU / SUN RGB-D loaders' default)")
            else:
                notes.append(f"input encoding: none known for DFormer's {m!r} input; fed as rgbx normalises it")
    elif layout == "cmnext":
        for m in modalities:
            if m == "rgb":
                continue
            image = _opencv_image_encoding(m)  # an 8-bit image sensor: DELIVER feeds it / 255, nothing else
            if image is not None:
                spec = get_modality(m)
                if any(v != 0.0 for v in spec.mean) or any(v != 1.0 for v in spec.std):
                    encoding[m] = {"mean": [0.0] * spec.channels, "std": [1.0] * spec.channels}
            elif m in _MCUBES_AS_STORED:
                encoding[m] = dict(_MCUBES_AS_STORED[m])
            elif m == "lidar":
                encoding[m] = {"mean": [0.0], "std": [255.0]}
                notes.append("input encoding: lidar as DELIVER feeds its LiDAR images (grey level / 255), for the "
                             "DeLiVER loader's default lidar_scale 1")
            else:
                why = {"depth": "DELIVER's 'depth' input is its hha/ folder: build the model with the hha sensor",
                       "event": "DELIVER feeds the rendered event image: build the model with the event_image "
                                "sensor (the deliver loader's event_format=image)"}.get(
                    m, "rgbx decodes it into another sensor than DELIVER's image")
                notes.append(f"input encoding: none for {m!r} ({why}); fed as rgbx normalises it")
    return encoding, notes


# the split and test-time flags of ``rgbx eval`` that score a converted model as the layout's own evaluation code
# does (benchmarks/parity.md checks them against that code; docs/reproducing.md lists them)
REFERENCE_EVALUATION = {
    "cmx": ("one scale, no flip, mIoU over the classes present (CMX's eval.py with its configs); its README's "
            "'MS & Flip' sets eval_scale_array [0.75, 1, 1.25] and eval_flip",
            "--split test  [--scales 0.75 1 1.25 --flip --scale-rule cmx --window 480x640]"),
    "dformer": ("mIoU over all classes; utils/eval.py --mst adds five scales and flipping",
                "--split test --miou all  [--scales 0.5 0.75 1 1.25 1.5 --flip --scale-rule dformer]"),
    # eval.sh runs utils/eval.py with --mst --sliding: evaluate_msf over the config's eval_crop_size windows at a
    # stride of int(2/3 × crop) (benchmarks/parity.md: 0 pixels apart from DFormer's own)
    "dformer/nyu": ("mIoU over all classes; eval.sh (--mst --sliding) adds five scales, flipping and 480×640 "
                    "sliding windows", "--dataset nyudepthv2 --split test --miou all  [--scales 0.5 0.75 1 1.25 1.5 --flip --scale-rule "
                                       "dformer --window 480x640 --stride 320x426]"),
    "dformer/sunrgbd": ("mIoU over all classes; eval.sh (--mst --sliding) adds five scales, flipping and 480×480 "
                        "sliding windows", "--dataset sunrgbd --split test --miou all  [--scales 0.5 0.75 1 1.25 1.5 "
                                           "--flip --scale-rule dformer --window 480x480 --stride 320x320]"),
    # DFormerv2 shares DFormer's utils/eval.py and evaluate_msf
    "dformerv2": ("mIoU over all classes; utils/eval.py --mst adds five scales and flipping",
                  "--split test --miou all  [--scales 0.5 0.75 1 1.25 1.5 --flip --scale-rule dformer]"),
    "dformerv2/nyu": ("mIoU over all classes; eval.sh (--mst --sliding) adds five scales, flipping and 480×640 "
                      "sliding windows", "--dataset nyudepthv2 --split test --miou all  [--scales 0.5 0.75 1 1.25 1.5 --flip "
                                         "--scale-rule dformer --window 480x640 --stride 320x426]"),
    # utils/eval.py refuses DFormerv2 on SUN RGB-D without --pad_SUNRGBD: every test image padded to 531×730
    "dformerv2/sunrgbd": ("every image padded to 531×730 (--pad_SUNRGBD, which DFormerv2's eval.py requires on SUN "
                          "RGB-D), mIoU over all classes; eval.sh (--mst --sliding) adds five scales, flipping and "
                          "480×480 sliding windows",
                          "--dataset sunrgbd --split test --miou all --option pad_to=[531,730]  [--scales 0.5 0.75 1 1.25 1.5 --flip "
                          "--scale-rule dformer --window 480x480 --stride 320x320]"),
    # DELIVER's semseg/metrics.py counts a class absent from labels and predictions as IoU 0: --miou all
    "cmnext": ("one scale, no flip, each image at its own size, mIoU over all classes (DELIVER's tools/val_mm.py)",
               "--split test --miou all"),
    "cmnext/deliver": ("DELIVER feeds the event renderings and evaluates each image and label resized to 1024 on "
                       "the shorter side (DeLiVER's are 1042×1042), mIoU over all classes",
                       "--dataset deliver --split val --miou all --option event_format=image "
                       "--option resize=1024"),
    "cmnext/mcubes": ("DELIVER's MCubeS 'val' is list_folder/test.txt, scored on the central 1024×1024 of each "
                      "image (FixScaleCrop), mIoU over all classes", "--dataset mcubes --split test --miou all --option center_crop=1024"),
}


# the protocols of one layout on one benchmark that rgbx reads with the layout's general protocol: the same flags,
# with the benchmark's loader named (CMX's and CMNeXt's NYU Depth V2 and MFNet)
for _layout, _benchmark, _loader in (("cmx", "nyu", "nyudepthv2"), ("cmx", "mfnet", "mfnet"),
                                     ("cmnext", "nyu", "nyudepthv2"), ("cmnext", "mfnet", "mfnet")):
    REFERENCE_EVALUATION[f"{_layout}/{_benchmark}"] = (
        REFERENCE_EVALUATION[_layout][0], f"--dataset {_loader} {REFERENCE_EVALUATION[_layout][1]}")
# the benchmark a layout's checkpoint was trained on, told by its class count where the layout's releases differ
_BENCHMARK_BY_CLASSES = {"cmx": {40: "nyu", 9: "mfnet"}, "cmnext": {40: "nyu", 9: "mfnet"},
                         "dformer": {40: "nyu", 37: "sunrgbd"}, "dformerv2": {40: "nyu", 37: "sunrgbd"}}


def reference_evaluation(layout: str, modalities: Sequence[str], num_classes: int) -> tuple[str, str] | None:
    """What the layout's own evaluation does and the ``rgbx eval`` flags that do the same, or None. DELIVER's and
    DFormer's protocols depend on the benchmark, told here by the sensors and classes: MCubeS's polarisation / NIR,
    DeLiVER's 25 classes (NYU Depth V2's CMNeXt also reads HHA, with 40); DFormer's evaluation windows are NYU Depth
    V2's 480×640 (40 classes) or SUN RGB-D's 480×480 (37). A protocol of one benchmark names its loader
    (``--dataset``): NYU Depth V2 (40 classes), SUN RGB-D (37), MFNet (9), DeLiVER, MCubeS."""
    if layout == "cmnext":
        if set(modalities) & {"aolp", "dolp", "nir"}:
            return REFERENCE_EVALUATION["cmnext/mcubes"]
        if num_classes == 25:
            return REFERENCE_EVALUATION["cmnext/deliver"]
    benchmark = _BENCHMARK_BY_CLASSES.get(layout, {}).get(num_classes)
    if benchmark is not None:
        return REFERENCE_EVALUATION[f"{layout}/{benchmark}"]
    return REFERENCE_EVALUATION.get(layout)
