"""MS3: multimodal (language + vision) supervision for multi-dataset segmentation pretraining.

Paper: "MS3: a multimodal supervised pretrained model for semantic segmentation" (``docs/methods/ms3.md``). Several
datasets D_1 … D_N are trained as one with the union label space Y = Y_1 ∪ … ∪ Y_N (``data.dataset: multi``). The
image encoder with a projection head gives a dense, L2-normalised embedding map I (the decode head's feature map,
stride 4, through a 3-layer 1×1 projection head; one head pairs with language, one with vision). For a pixel i of
label y_i = j (τ = 0.07)::

    L_l^i = −log( exp(I_i·T_j/τ) / Σ_k exp(I_i·T_k/τ) )                                        (Eq. 1)
    L_v^i = −log( exp(I_i·V_j/τ) / Σ_k exp(I_i·V_k/τ) )                                        (Eq. 2)
    L     = L_l + α L_v                                                                           (Eq. 3)
    V_j   = Σ_i 1[y_i = j] W_ij M_i / Σ_i 1[y_i = j],  W_ij = cos(M_i, V_j^old)                   (Eq. 4)
    S_y^y' = Σ_k 1[y_k = y] F_k·T_y' / Σ_k 1[y_k = y]                                             (Eq. 5)
    Ỹ_y^y' = 1[S_y^y' ≥ S_y^y  and  y' ∈ Y \\ Y_i]          (y ∈ Y_i)                             (Eq. 6)
    L̃_l^i = −log( (exp(I_i·T_j/τ) + Σ_k Ỹ_j^k exp(I_i·T_k/τ)) / Σ_k exp(I_i·T_k/τ) )            (Eq. 7)
    L̃_v^i = the same with V                                                                       (Eq. 8)
    L̃     = L̃_l + α L̃_v                                                                         (Eq. 9)

* T: language embeddings of the class names, read from ``method.options.class_embeddings`` (a safetensors file,
  class name → 1-D vector; :func:`load_class_embeddings`), improved by M_I (:class:`LanguageImprover`).
* V: visual class embeddings from a memory bank M of pixel embeddings of the momentum-updated encoder F̂
  (θ_F̂ ← m θ_F̂ + (1 − m) θ_F before each step; :class:`MS3Memory`).
* Ỹ: the cross-modal multi-label mapping (M_C), from a running mean over steps of S (Eq. 5), used by both losses.

rgbx's adaptations (the doc lists them): M_I is a residual MLP on the frozen text embeddings trained jointly with
Eq. 1 (the paper adapts CLIP's text encoder with 13 learnable context tokens in a separate stage; rgbx has no text
encoder at training time); the model's own classifier is trained on *detached* decoder features (a linear probe,
``probe_weight``) so the trainer's validation mIoU is meaningful without changing what the encoder learns.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import CheckpointError, ConfigError
from rgbx.methods.base import METHODS, Method, drop_modalities
from rgbx.models.layers import resize

__all__ = ["MS3", "MS3Head", "MS3Memory", "LanguageImprover", "HEAD_FILE", "gather_rows", "load_class_embeddings",
           "load_ms3_head", "multi_label_nce", "multi_label_targets", "relation_scores", "save_ms3_head",
           "visual_embeddings"]

HEAD_FILE = "ms3_head.safetensors"
HEAD_FORMAT = "rgbx-ms3-head/1"


# -- language embeddings ------------------------------------------------------------------------------------------
def bare_name(name: str, source: str | None) -> str:
    """``"a/person"`` with source ``"a"`` → ``"person"``; a name without its source prefix is returned as is."""
    if source and name.startswith(source + "/"):
        return name[len(source) + 1:]
    return name


def load_class_embeddings(path: str | Path, classes: list[str], sources: list[str] | None = None,
                          what: str | None = None) -> torch.Tensor:
    """(K, C) float32 language embeddings of ``classes`` from a safetensors file mapping class name → 1-D vector.

    A class is looked up by its full name (``"a/person"``) first, then by its bare name (``"person"``, its source
    prefix removed), so one file of plain class names serves every union of datasets. The file is read with
    safetensors only (no pickle). A missing file or class, or vectors of different lengths, is a ConfigError naming
    the class and the file. ``what`` is the setting the path came from, named in the errors (e.g.
    ``"method.options.class_embeddings"``); None names the file alone."""
    from safetensors import SafetensorError, safe_open

    path = Path(path) if str(path) else ""
    if not path:
        raise ConfigError(f"{what or 'the class embeddings'} is required: a .safetensors file mapping each class "
                          "name to a 1-D vector (make one with `rgbx embed-classes`)")
    if not path.is_file():
        where = f"{what}={str(path)!r}" if what else str(path)
        raise ConfigError(f"{where}: class-embedding file not found (make one with `rgbx embed-classes`)")
    sources = list(sources) if sources is not None else [None] * len(classes)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            _check_embedding_file(path, f.metadata() or {}, {k: f.get_slice(k).get_shape() for k in keys})
            rows = []
            for name, source in zip(classes, sources, strict=True):
                key = name if name in keys else bare_name(name, source)
                if key not in keys:
                    alt = "" if key == name else f" or {key!r}"
                    raise ConfigError(f"{path}: no embedding for class {name!r}{alt} (the file has "
                                      f"{len(keys)} classes, e.g. {sorted(keys)[:5]})")
                vec = f.get_tensor(key)
                if vec.ndim != 1 or not vec.is_floating_point():
                    raise ConfigError(f"{path}: the embedding of {key!r} must be a 1-D float vector, got "
                                      f"{tuple(vec.shape)} {vec.dtype}")
                rows.append(vec.float())
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None
    dims = {r.numel() for r in rows}
    if len(dims) > 1:
        raise ConfigError(f"{path}: class embeddings of different lengths {sorted(dims)}")
    return torch.stack(rows)


def _check_embedding_file(path: Path, metadata: dict, shapes: dict[str, list[int]]) -> None:
    """A file that is not a class-embedding file (an rgbx model or MS3 head file, or tensors that are not 1-D
    vectors) is a ConfigError saying so and how to make one."""
    how = ("a class-embedding file maps each class name to a 1-D vector; make one with `rgbx embed-classes` "
           "(rgbx embed-classes --help)")
    if "rgbx" in metadata:
        raise ConfigError(f"{path}: an rgbx model file, not a class-embedding file; {how}")
    if "rgbx_ms3" in metadata:
        raise ConfigError(f"{path}: an MS3 head file (ms3_head.safetensors), not a class-embedding file; {how}")
    not_vectors = sorted(k for k, shape in shapes.items() if len(shape) != 1)
    if not_vectors:
        k = not_vectors[0]
        raise ConfigError(f"{path}: not a class-embedding file: {len(not_vectors)} of its {len(shapes)} tensors are "
                          f"not 1-D vectors (e.g. {k!r} of shape {tuple(shapes[k])}); {how}")


def save_class_embeddings(path: str | Path, embeddings: dict[str, torch.Tensor], **metadata: str) -> Path:
    """Write ``{class name: 1-D vector}`` as safetensors, atomically (the format :func:`load_class_embeddings`
    reads)."""
    from safetensors.torch import save_file

    from rgbx.models.model_file import atomic_write

    tensors = {k: v.detach().float().reshape(-1).contiguous().cpu() for k, v in embeddings.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()}))


# -- modules ------------------------------------------------------------------------------------------------------
def projection_head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """The paper's 3-layer projection head, as 1×1 convolutions on the dense map: conv-BN-ReLU ×2, conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
    )


class LanguageImprover(nn.Module):
    """M_I, rgbx's form: T' = T + g(T), g a 2-layer MLP whose last layer starts at zero (so T' = T at step 0),
    trained with the pixel-language pairing loss (Eq. 1 / 7). Applies to any class's embedding, so zero-shot
    classes are improved the same way."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.mlp(t)


class MS3Head(nn.Module):
    """What MS3 trains besides the model: the language / visual projection heads and M_I. Saved with the run
    (``ms3_head.safetensors``) for zero-shot prediction."""

    def __init__(self, in_channels: int, embed_dim: int, hidden: int = 256, improve_language: bool = True):
        super().__init__()
        self.in_channels, self.embed_dim, self.hidden = in_channels, embed_dim, hidden
        self.language_proj = projection_head(in_channels, hidden, embed_dim)
        self.visual_proj = projection_head(in_channels, hidden, embed_dim)
        self.improve = LanguageImprover(embed_dim, hidden) if improve_language else None

    def language(self, t: torch.Tensor) -> torch.Tensor:
        """Raw text embeddings (K, C) → improved, L2-normalised T (M_I)."""
        t = t.float()
        return F.normalize(self.improve(t) if self.improve is not None else t, dim=-1)

    def pixel_language(self, decoder: torch.Tensor) -> torch.Tensor:
        """Decoder map (B, D, h, w) → L2-normalised pixel embeddings I for language pairing (B, C, h, w)."""
        return F.normalize(self.language_proj(decoder.float()), dim=1)

    def pixel_visual(self, decoder: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual_proj(decoder.float()), dim=1)

    def spec(self) -> dict:
        return {"in_channels": self.in_channels, "embed_dim": self.embed_dim, "hidden": self.hidden,
                "improve_language": self.improve is not None}


class MS3Memory(nn.Module):
    """The non-trained state of MS3, saved in the run's training state so a resumed run continues exactly: the
    momentum encoder F̂ (a copy of the model and of the visual projection head, θ̂ ← m θ̂ + (1 − m) θ), the
    per-class memory bank M of F̂'s pixel embeddings (a FIFO of ``bank_size`` per class), the visual class
    embeddings V (Eq. 4), the running relation scores S (Eq. 5) and the step count."""

    def __init__(self, model: nn.Module | None, visual_proj: nn.Module, num_classes: int, embed_dim: int,
                 bank_size: int):
        super().__init__()
        self.encoder = None if model is None else _frozen_copy(model)
        self.visual_proj = _frozen_copy(visual_proj)
        k = num_classes
        self.register_buffer("bank", torch.zeros(k, bank_size, embed_dim))
        self.register_buffer("bank_count", torch.zeros(k, dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros(k, dtype=torch.long))
        self.register_buffer("visual", torch.zeros(k, embed_dim))
        self.register_buffer("visual_valid", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("relation", torch.zeros(k, k))
        self.register_buffer("relation_seen", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self, model: nn.Module, visual_proj: nn.Module, m: float) -> None:
        """θ̂ ← m θ̂ + (1 − m) θ for F̂'s parameters; buffers (BatchNorm statistics) are copied."""
        pairs = [(self.visual_proj, visual_proj)] + ([] if self.encoder is None else [(self.encoder, model)])
        for ema, live in pairs:
            for p_ema, p in zip(ema.parameters(), live.parameters(), strict=True):
                p_ema.mul_(m).add_(p.detach(), alpha=1 - m)
            for b_ema, b in zip(ema.buffers(), live.buffers(), strict=True):
                b_ema.copy_(b)

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Push pixel embeddings (N, C) of classes ``labels`` (N,) into their classes' FIFOs (oldest replaced)."""
        size = self.bank.shape[1]
        for c in labels.unique().tolist():
            rows = embeddings[labels == c][-size:]
            n = rows.shape[0]
            start = int(self.bank_next[c])
            slots = (torch.arange(n, device=rows.device) + start) % size
            self.bank[c, slots] = rows.to(self.bank.dtype)
            self.bank_next[c] = (start + n) % size
            self.bank_count[c] = min(size, int(self.bank_count[c]) + n)

    @torch.no_grad()
    def update_visual(self) -> None:
        """V ← Eq. 4 over the bank, then L2-normalised (the pairing uses cosine similarity)."""
        v, valid = visual_embeddings(self.bank, self.bank_count, self.visual, self.visual_valid)
        self.visual.copy_(v)
        self.visual_valid.copy_(valid)

    @torch.no_grad()
    def update_relation(self, scores: torch.Tensor, seen: torch.Tensor, momentum: float) -> None:
        """Running mean of S (Eq. 5) over steps: S ← m S + (1 − m) S_batch for the classes of the batch (the first
        observation of a class is taken as it is)."""
        old = self.relation_seen.view(-1, 1)
        blended = torch.where(old, momentum * self.relation + (1 - momentum) * scores, scores)
        self.relation.copy_(torch.where(seen.view(-1, 1), blended, self.relation))
        self.relation_seen |= seen


def _frozen_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone.eval()


# -- the equations ------------------------------------------------------------------------------------------------
def visual_embeddings(bank: torch.Tensor, count: torch.Tensor, old: torch.Tensor, old_valid: torch.Tensor):
    """Eq. 4: V_j = Σ_i W_ij M_i / n_j over the n_j embeddings of class j in the bank, W_ij = cos(M_i, V_j^old)
    (W = 1 for a class without an old embedding yet), L2-normalised. Returns (V (K, C), valid (K,)): a class with
    an empty bank has no V."""
    k, size, _ = bank.shape
    filled = torch.arange(size, device=bank.device).view(1, -1) < count.view(-1, 1)  # (K, Q)
    w = torch.einsum("kqc,kc->kq", F.normalize(bank, dim=-1), F.normalize(old, dim=-1))
    w = torch.where(old_valid.view(-1, 1), w, torch.ones_like(w)) * filled
    v = (w.unsqueeze(-1) * bank).sum(1) / count.clamp(min=1).view(-1, 1).to(bank.dtype)
    return F.normalize(v, dim=-1), count > 0


def relation_scores(pixels: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, num_classes: int):
    """Eq. 5 on a batch: S_y^y' = mean over its pixels of class y of F_k·T_y'. ``pixels`` (N, C), ``labels`` (N,),
    ``text`` (K, C). Returns (S (K, K), seen (K,)) with zero rows for classes absent from the batch. Under
    torch.distributed the means are over the pixels of every process's batch (the same S on every process)."""
    sums = torch.zeros(num_classes, pixels.shape[1], dtype=pixels.dtype, device=pixels.device)
    sums.index_add_(0, labels, pixels)
    counts = torch.bincount(labels, minlength=num_classes).to(sums.dtype)
    if _world_size() > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    means = sums / counts.clamp(min=1).view(-1, 1)
    return means @ text.T, counts > 0


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(rows: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``rows`` (N_p, C) and ``labels`` (N_p,) concatenated in rank order (the same result on every
    process), so the memory bank and V stay identical across the processes of a torchrun launch; as they are in a
    single process."""
    world = _world_size()
    if world == 1:
        return rows, labels
    dist = torch.distributed
    n = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    most = max(sizes)
    padded = rows.new_zeros(most, rows.shape[1])
    padded[: rows.shape[0]] = rows
    padded_labels = labels.new_zeros(most)
    padded_labels[: labels.shape[0]] = labels
    all_rows = [torch.zeros_like(padded) for _ in range(world)]
    all_labels = [torch.zeros_like(padded_labels) for _ in range(world)]
    dist.all_gather(all_rows, padded)
    dist.all_gather(all_labels, padded_labels)
    return (torch.cat([r[:k] for r, k in zip(all_rows, sizes, strict=True)]),
            torch.cat([y[:k] for y, k in zip(all_labels, sizes, strict=True)]))


def multi_label_targets(relation: torch.Tensor, seen: torch.Tensor, class_source: torch.Tensor) -> torch.Tensor:
    """Eq. 6: Ỹ_y^y' = 1[S_y^y' ≥ S_y^y and y' from another dataset than y], for classes y with a score (``seen``).
    ``class_source`` (K,) holds each class's dataset index. Returns (K, K) bool; not symmetric in general."""
    own = relation.diagonal().view(-1, 1)
    other = class_source.view(-1, 1) != class_source.view(1, -1)
    return (relation >= own) & other & seen.view(-1, 1)


def multi_label_nce(logits: torch.Tensor, labels: torch.Tensor, extra: torch.Tensor | None = None,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 / 2 (``extra`` None or all False) and Eq. 7 / 8: per pixel, −log of the softmax mass of the positive
    set {y_i} ∪ {k: Ỹ_{y_i}^k}, averaged over the pixels. ``logits`` (N, K) = I·E/τ, ``labels`` (N,), ``extra``
    (K, K) bool = Ỹ. ``valid`` (K,) bool: classes that have an embedding at all (the others are left out of the sum
    and their pixels skipped). 0 (with a gradient path) when no pixel counts."""
    k = logits.shape[1]
    pos = F.one_hot(labels, k).bool()
    if extra is not None:
        pos = pos | extra[labels]
    logits = logits.float()
    if valid is not None:
        keep = valid[labels]
        logits, pos, labels = logits[keep], pos[keep] & valid.view(1, -1), labels[keep]
        logits = logits.masked_fill(~valid.view(1, -1), float("-inf"))
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    positive = logits.masked_fill(~pos, float("-inf")).logsumexp(1)
    return (logits.logsumexp(1) - positive).mean()


def downsample_label(label: torch.Tensor, size, ignore_index: int) -> torch.Tensor:
    """(B, H, W) labels → (B, h, w) by nearest neighbour (the embedding map's resolution)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


# -- the method ---------------------------------------------------------------------------------------------------
@METHODS.register("ms3")
class MS3(Method):
    """MS3 multi-dataset pretraining (see the module docstring). Loss terms: ``language`` (Eq. 1 / 7), ``visual``
    (α × Eq. 2 / 8) and ``probe`` (the model's own classifier on detached features, rgbx's addition)."""

    @dataclass
    class Options:
        class_embeddings: str = ""  # .safetensors: class name → 1-D vector (required; `rgbx embed-classes`)
        classes: list[str] | None = None  # the union's class names in label order; the trainer fills it
        class_sources: list[str] | None = None  # each class's dataset; the trainer fills it (None: one dataset)
        temperature: float = 0.07  # τ, Eq. 1/2/7/8 (the paper's, after LSeg)
        alpha: float = 1.0  # α, the weight of the vision supervision, Eq. 3/9
        hidden: int = 256  # width of the projection heads and of M_I
        improve_language: bool = True  # M_I on the language embeddings
        visual: bool = True  # the momentum visual embeddings and L_v (Eq. 2/4/8)
        multi_label: bool = True  # M_C: the cross-modal multi-label extension (Eq. 5-9)
        momentum_encoder: bool = True  # F̂ = a momentum copy of the whole model (False: the live model, detached)
        encoder_momentum: float = 0.999  # m in θ̂ ← m θ̂ + (1 − m) θ
        bank_size: int = 64  # pixel embeddings kept per class in the memory bank
        pixels_per_class: int = 16  # drawn per class and step into the bank
        relation_momentum: float = 0.9  # running mean of S (Eq. 5) over steps
        # steps trained before Ỹ (Eq. 6) is used. With 0 and a random head, S is noise and Eq. 6 marks about half of
        # the other datasets' classes as positives at the start; a warm-up is recommended (synth_ms3 uses 200)
        multi_label_after: int = 0
        probe_weight: float = 1.0  # CE of the model's classifier on detached decoder features (0 = off)

        def __post_init__(self):
            if self.temperature <= 0:
                raise ValueError(f"method.options.temperature must be > 0, got {self.temperature}")
            for name in ("alpha", "probe_weight"):
                if getattr(self, name) < 0:
                    raise ValueError(f"method.options.{name} must be >= 0, got {getattr(self, name)}")
            for name in ("encoder_momentum", "relation_momentum"):
                if not 0 <= getattr(self, name) < 1:
                    raise ValueError(f"method.options.{name} must be in [0, 1), got {getattr(self, name)}")
            for name in ("hidden", "bank_size", "pixels_per_class"):
                if getattr(self, name) < 1:
                    raise ValueError(f"method.options.{name} must be >= 1, got {getattr(self, name)}")
            if self.multi_label_after < 0:
                raise ValueError(f"method.options.multi_label_after must be >= 0, got {self.multi_label_after}")
            if self.classes is not None and self.class_sources is not None \
                    and len(self.classes) != len(self.class_sources):
                raise ValueError(f"method.options.class_sources has {len(self.class_sources)} entries, "
                                 f"method.options.classes {len(self.classes)}")

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if not self.options.class_embeddings:
            raise ConfigError("method.options.class_embeddings is required: a .safetensors file mapping each class "
                              "name to a 1-D vector (make one with `rgbx embed-classes`)")
        self.head: MS3Head | None = None
        self.memory: MS3Memory | None = None
        self.text: torch.Tensor | None = None  # T before M_I, (K, C)
        self.class_source: torch.Tensor | None = None  # (K,) dataset index of each class

    @classmethod
    def complete_config(cls, cfg, train_set=None) -> None:
        """Fill ``method.options.classes`` / ``class_sources`` from the training data (the trainer calls this with
        its training set; without one the dataset is opened from ``cfg.data``). Given ones must match the data."""
        from rgbx.data import build_dataset

        data = cfg.data
        ds = train_set if train_set is not None else build_dataset(data.dataset, data.root, data.train_split,
                                                                    check="none", **data.options)
        classes = list(ds.description.classes)
        sources = list(getattr(ds, "class_sources", None) or [ds.description.name] * len(classes))
        options = cfg.method.options
        for key, value in (("classes", classes), ("class_sources", sources)):
            given = options.get(key)
            if given is not None and list(given) != value:
                raise ConfigError(f"method.options.{key}={list(given)} differs from the training data's {value} "
                                  f"(data.dataset={data.dataset}, data.root={data.root}); leave it unset")
            options[key] = value

    def prepare(self, model: torch.nn.Module, device: torch.device) -> None:
        o = self.options
        model = getattr(model, "module", model)
        if o.classes is None:
            raise ConfigError("method.options.classes is unset: the trainer fills it from the training data; "
                              "without a trainer call MS3.complete_config(cfg) first")
        if len(o.classes) != model.num_classes:
            raise ConfigError(f"method.options.classes lists {len(o.classes)} classes, the model has "
                              f"{model.num_classes}")
        head = getattr(model, "head", None)
        classifier = getattr(head, "classifier", None)
        if classifier is None or not hasattr(head, "dropout"):
            raise ConfigError(f"method ms3 needs a decode head with a 'classifier' and 'dropout' (mlp, ham, fcn); "
                              f"got {type(head).__name__}")
        sources = o.class_sources or ["data"] * len(o.classes)
        order = list(dict.fromkeys(sources))
        self.class_source = torch.tensor([order.index(s) for s in sources], device=device)
        self.text = load_class_embeddings(o.class_embeddings, list(o.classes), sources,
                                          what="method.options.class_embeddings").to(device)
        self.head = MS3Head(classifier.in_channels, self.text.shape[1], o.hidden, o.improve_language).to(device)
        self.memory = MS3Memory(model if o.momentum_encoder else None, self.head.visual_proj, len(o.classes),
                                self.text.shape[1], o.bank_size).to(device)

    def trainable_modules(self) -> list[torch.nn.Module]:
        # the memory has no trainable parameter; listing it saves it in the training state (exact resume)
        return [] if self.head is None else [self.head, self.memory]

    def save_run_files(self, root: str | Path) -> Path | None:
        """Write the MS3 head (projections, M_I) as ``root/ms3_head.safetensors`` (atomically)."""
        if self.head is None:
            return None
        return save_ms3_head(Path(root) / HEAD_FILE, self.head, temperature=self.options.temperature,
                             classes=list(self.options.classes or []),
                             class_embeddings=str(self.options.class_embeddings))

    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.head is None or self.memory is None:
            raise RuntimeError("MS3.prepare(model, device) must be called before step()")
        o, head, memory = self.options, self.head, self.memory
        if batch.label is None:
            raise ConfigError("method ms3 needs labelled data")
        batch = drop_modalities(batch, self.config.modality_dropout, generator)
        out = model(batch.inputs, batch.present, return_decoder=True)
        decoder = out.decoder  # (B, D, h, w), stride 4
        label = downsample_label(batch.label, decoder.shape[-2:], self.ignore_index).flatten()
        keep = label != self.ignore_index
        y = label[keep]
        k = len(o.classes)

        def pixels(embedding):  # (B, C, h, w) → (N, C), the labelled pixels
            return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])[keep]

        text = head.language(self.text)  # T (M_I applied), (K, C)
        pix_l = pixels(head.pixel_language(decoder))  # I for language pairing, (N, C)
        step = int(memory.steps)
        extra = None
        if o.multi_label:
            scores, seen = relation_scores(pix_l.detach(), y, text.detach(), k)  # Eq. 5 on this batch
            memory.update_relation(scores, seen, o.relation_momentum)
            if step >= o.multi_label_after:
                extra = multi_label_targets(memory.relation, memory.relation_seen, self.class_source)  # Eq. 6
        losses = {"language": multi_label_nce(pix_l @ text.T / o.temperature, y, extra)}  # Eq. 1 / 7
        if o.visual:
            pix_v = pixels(head.pixel_visual(decoder))
            with torch.no_grad():
                live = getattr(model, "module", model)
                memory.momentum_update(live, head.visual_proj, o.encoder_momentum)  # F̂ ← m F̂ + (1 − m) F
                if memory.encoder is not None:
                    key_dec = memory.encoder(batch.inputs, batch.present, return_decoder=True).decoder
                else:
                    key_dec = decoder.detach()
                keys = pixels(F.normalize(memory.visual_proj(key_dec.float()), dim=1))  # Î
                pick = sample_per_class(y, o.pixels_per_class, generator)
                memory.enqueue(*gather_rows(keys[pick], y[pick]))  # every process's draws, in rank order
                memory.update_visual()  # V, Eq. 4
            logits = pix_v @ memory.visual.T / o.temperature
            losses["visual"] = o.alpha * multi_label_nce(logits, y, extra, memory.visual_valid)  # Eq. 2 / 8; Eq. 3 / 9
        if o.probe_weight:
            live = getattr(model, "module", model)
            probe = live.head.classifier(live.head.dropout(decoder.detach()))
            probe = resize(probe, batch.label.shape[-2:])
            losses["probe"] = o.probe_weight * self.segmentation_loss(probe, batch.label)
        memory.steps += 1
        return losses


def sample_per_class(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of at most ``n`` pixels of each class in ``labels`` (N,), drawn with ``generator`` (CPU)."""
    host = labels.cpu()
    picks = []
    for c in host.unique().tolist():
        where = torch.nonzero(host == c).flatten()
        picks.append(where[torch.randperm(len(where), generator=generator)[:n]])
    if not picks:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    return torch.cat(picks).to(labels.device)


# -- the saved head -----------------------------------------------------------------------------------------------
def save_ms3_head(path: str | Path, head: MS3Head, **info) -> Path:
    """The MS3 head's weights + its shape and the training classes, as safetensors, atomically."""
    from safetensors.torch import save_file

    from rgbx.models.model_file import atomic_write

    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"format": HEAD_FORMAT, "head": head.spec(), **info}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"rgbx_ms3": json.dumps(meta)}))


def load_ms3_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[MS3Head, dict]:
    """An MS3 head from ``ms3_head.safetensors``, or from a run folder (its ``ms3_head.safetensors``). Returns
    (head in eval mode, metadata with ``temperature`` and the training ``classes``)."""
    from safetensors import SafetensorError, safe_open

    from rgbx.models.model_file import load_state_into

    path = Path(path)
    if path.is_dir():
        path = path / HEAD_FILE
    if not path.is_file():
        _refuse_other_method(path)
        raise CheckpointError(f"{path}: MS3 head not found (written by `rgbx train` with method.name=ms3 next to "
                              f"model.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("rgbx_ms3", "null") or "null")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise CheckpointError(f"{path}: not an MS3 head file (no {HEAD_FORMAT!r} metadata)")
    head = MS3Head(**meta["head"])
    load_state_into(head, tensors, str(path))
    return head.to(device).eval(), meta


def _refuse_other_method(path: Path) -> None:
    """No MS3 head at ``path``: when a model file next to it was trained with another method, say so (only a model
    trained with method ms3 has a head, and zero-shot prediction needs it)."""
    from rgbx.models.model_file import read_model_info

    for name in ("model.safetensors", "best.safetensors"):
        model = path.parent / name
        if not model.is_file():
            continue
        try:
            method = ((read_model_info(model, missing_ok=True) or {}).get("training") or {}).get("method")
        except CheckpointError:
            continue
        if method and method != "ms3":
            raise CheckpointError(f"{path}: MS3 head not found: the model {model} was trained with method "
                                  f"{method!r}, not ms3; zero-shot prediction (--zero-shot) needs a model trained "
                                  f"with method.name=ms3, which writes {HEAD_FILE} next to model.safetensors")
