"""Optimizer parameter groups and the learning-rate schedule.

Groups are built from ``named_parameters()`` (so bare ``nn.Parameter``s such as norm weights are never dropped, a
bug of the reference repos), and :func:`param_groups` checks that every trainable parameter is in exactly one group.
"""

from __future__ import annotations

import torch

NO_DECAY_NAME_PARTS = ("pos_embed", "pos_block", "relative_position", "cls_token", "gamma")


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, head_lr_mult: float = 1.0,
                 head_prefix: str = "head.") -> list[dict]:
    """decay / no-decay (norms, biases, 1-d params, position terms) × backbone / head (lr × ``head_lr_mult``)."""
    groups: dict[tuple[bool, bool], list] = {}
    names: dict[tuple[bool, bool], list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or any(part in name for part in NO_DECAY_NAME_PARTS)
        is_head = name.startswith(head_prefix)
        groups.setdefault((no_decay, is_head), []).append(p)
        names.setdefault((no_decay, is_head), []).append(name)
    result = []
    for (no_decay, is_head), params in sorted(groups.items()):
        result.append({
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * (head_lr_mult if is_head else 1.0),
            "names": names[(no_decay, is_head)],
        })
    check_param_groups(model, result)
    return result


def freeze_parameters(model: torch.nn.Module, prefixes: list[str]) -> int:
    """Stop training the parameters under each dotted module path in ``prefixes`` (``encoder``,
    ``encoder.branches.rgb``, ...), or whose full name matches an entry with a wildcard (``*``, ``?``, ``[``:
    :mod:`fnmatch` patterns, e.g. ``encoder.encoder.stages.*.layer_scale_*``); returns how many values were frozen.
    An entry that names no parameter is a ConfigError listing the model's modules. BatchNorm statistics under a
    frozen path still follow the data."""
    from fnmatch import fnmatchcase

    from rgbx.errors import ConfigError

    named = dict(model.named_parameters())
    frozen = 0
    for prefix in prefixes:
        if any(c in prefix for c in "*?["):
            hits = [p for n, p in named.items() if fnmatchcase(n, prefix)]
        else:
            hits = [p for n, p in named.items() if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            modules = sorted({".".join(n.split(".")[:depth]) for n in named for depth in (1, 2, 3)})
            raise ConfigError(f"train.freeze: {prefix!r} names no parameter of the model; its modules include "
                              + ", ".join(modules[:40]) + (", ..." if len(modules) > 40 else ""))
        for p in hits:
            if p.requires_grad:
                frozen += p.numel()
            p.requires_grad_(False)
    if not any(p.requires_grad for p in named.values()):
        raise ConfigError(f"train.freeze={list(prefixes)} freezes every parameter of the model: nothing would train "
                          f"(leave a part out, e.g. the head)")
    return frozen


def check_param_groups(model: torch.nn.Module, groups: list[dict]) -> None:
    seen: dict[int, int] = {}
    for g in groups:
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for i, n in trainable.items() if i not in seen]
    doubled = [trainable.get(i, "?") for i, c in seen.items() if c > 1]
    if missing or doubled:
        raise RuntimeError(f"optimizer groups are wrong: missing {missing[:5]}, in several groups {doubled[:5]}")


def build_optimizer(model: torch.nn.Module, cfg, extra: list[torch.nn.Module] = (),
                    fused: bool | None = None, capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``model``'s groups, plus the parameters of ``extra`` modules (a method's own trainable parts,
    e.g. auxiliary heads or feature aligners) with the backbone lr. ``fused``: AdamW's fused kernel (one launch for
    all parameters); None = on when the parameters are on CUDA; False = PyTorch's default implementation (the
    multi-tensor ``foreach`` kernels on CUDA, the per-tensor loop on the CPU: what the reference code gets).
    ``capturable``: the step keeps its state on the device and reads nothing back, so it can be captured into a
    CUDA graph."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.head_lr_mult)
    for module in extra:
        groups.extend(param_groups(module, cfg.weight_decay, cfg.lr, 1.0, head_prefix="\0"))
    for g in groups:
        g.pop("names")
    if fused is None:
        fused = next(model.parameters()).is_cuda or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=fused or None, capturable=capturable)


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Make a (resumed) AdamW capturable or not, whatever the run it was saved from used: the groups' flag, and each
    parameter's step count on the parameter's device (capturable) or on the CPU (not), as AdamW expects."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                device = p.device if capturable or group.get("fused") else torch.device("cpu")
                state["step"] = step.to(device=device, dtype=torch.float32)


def lr_as_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Give each parameter group's learning rate as a 0-d tensor on the parameters' device, so a captured optimizer
    step reads the current value at each replay (a Python float would be frozen into the graph). ``initial_lr``
    stays a float, so a schedule computes plain numbers and writes them in with ``fill_``, no device read-back.
    Returns the tensors, in group order (:func:`keep_lr_tensors` puts them back where a schedule replaced them)."""
    tensors = []
    for group in optimizer.param_groups:
        value = group["lr"]
        device = group["params"][0].device
        if not isinstance(value, torch.Tensor) or value.device != device:
            value = torch.tensor(float(value), dtype=torch.float32, device=device)
        group["lr"] = value
        if isinstance(group.get("initial_lr"), torch.Tensor):
            group["initial_lr"] = float(group["initial_lr"])
        tensors.append(value)
    return tensors


def keep_lr_tensors(optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> None:
    """After a schedule's step: where it stored a new learning rate as a Python number (or a new tensor) instead of
    writing into the group's tensor, write the value into the tensor a captured graph reads, and put it back."""
    for group, tensor in zip(optimizer.param_groups, tensors, strict=True):
        value = group["lr"]
        if value is not tensor:
            tensor.fill_(float(value) if not isinstance(value, torch.Tensor) or value.device.type == "cpu" else value)
            group["lr"] = tensor


def warmup_poly(total_iters: int, warmup_iters: int, warmup_ratio: float, power: float,
                poly_from: str = "warmup_end"):
    """lr factor: linear warm-up from ``warmup_ratio`` to 1, then ``(1 - t)^power`` decay to 0 at ``total_iters``,
    with ``t`` counted from the end of the warm-up (``poly_from="warmup_end"``: mmsegmentation, DeLiVER) or from
    iteration 0 (``"start"``: CMX, DFormer, whose factor drops from 1 to ``(1 - warmup / total)^power`` as the
    warm-up ends)."""
    if poly_from not in ("warmup_end", "start"):
        raise ValueError(f"poly_from must be warmup_end or start, got {poly_from!r}")
    start = warmup_iters if poly_from == "warmup_end" else 0

    def factor(it: int) -> float:
        if it < warmup_iters:
            return warmup_ratio + (1 - warmup_ratio) * it / max(1, warmup_iters)
        t = (it - start) / max(1, total_iters - start)
        return max(0.0, 1 - t) ** power

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_iters: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_poly(total_iters, cfg.warmup_iters, cfg.warmup_ratio, cfg.poly_power, cfg.poly_from)
    )
