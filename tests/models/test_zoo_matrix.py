"""Every registered fusion × every registered head runs forward and backward on CPU for every non-empty subset of
the modalities it is built for (tiny backbones, 32×32 inputs, batch 2).

The fusions and heads come from the registries (``rgbx.models.list_models()``), so a newly registered one joins the
matrix by itself; a fusion needs an entry in :data:`FUSION_SETUPS` (its tiny backbone and modality set), and a
registered fusion without one is a failing test that says so.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rgbx.modalities import get_modality
from rgbx.models import create_model, list_models

REGISTERED = list_models()
FUSIONS = list(REGISTERED["fusions"])
HEADS = list(REGISTERED["heads"])

# fusion → (the tiny backbone it accepts, the modalities its test model is built with). Every non-empty subset of the
# modalities is passed at forward time.
FUSION_SETUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mean": ("mit_nano", ("rgb", "depth", "thermal")),
    "cmx": ("mit_nano", ("rgb", "depth", "thermal")),
    "cmnext": ("mit_nano", ("rgb", "depth", "thermal")),
    "omni": ("omni_nano", ("rgb", "depth", "thermal")),
    "ktb": ("mit_nano", ("rgb", "depth")),  # RGB + X: exactly two modalities (a frozen shared MiT)
    "dformer": ("dformer_nano", ("rgb", "depth")),  # RGB + one depth-like modality
    "dformerv2": ("dformerv2_nano", ("rgb", "depth")),  # RGB + one depth-like modality (the attention's prior)
}
NUM_CLASSES = 3
SIZE = (32, 32)  # the deepest stage is 1×1 (stride 32)
BATCH = 2


def _subsets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def _cases() -> list:
    cases = []
    for fusion in FUSIONS:
        setup = FUSION_SETUPS.get(fusion)
        subsets = _subsets(setup[1]) if setup else [None]  # an unmapped fusion: one case, which fails
        for head in HEADS:
            for subset in subsets:
                subset_id = "+".join(subset) if subset else "unmapped"
                cases.append(pytest.param(fusion, head, subset, id=f"{fusion}-{head}-{subset_id}"))
    return cases


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def _model(fusion: str, head: str) -> torch.nn.Module:
    """One model per (fusion, head) for the whole module (built at first use)."""
    key = (fusion, head)
    if key not in _MODELS:
        backbone, modalities = FUSION_SETUPS[fusion]
        torch.manual_seed(0)
        _MODELS[key] = create_model(backbone=backbone, fusion=fusion, head=head, modalities=list(modalities),
                                    num_classes=NUM_CLASSES, head_channels=16).train()
    return _MODELS[key]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_release_models():
    """One intra-op thread: these models are tiny, and with two threads on a shared 2-core machine every op waits
    for a busy core (measured 0.1 s → 5 s per case under load). The models are dropped at the end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _MODELS.clear()


def test_matrix_covers_every_registered_fusion_and_head():
    cases = [c.values for c in _cases()]
    assert {c[0] for c in cases} == set(REGISTERED["fusions"])
    assert {c[1] for c in cases} == set(REGISTERED["heads"])
    unknown = sorted(set(FUSION_SETUPS) - set(FUSIONS))
    assert not unknown, f"FUSION_SETUPS names fusions that are not registered: {unknown}"


@pytest.mark.parametrize("fusion, head, subset", _cases())
def test_forward_and_backward(fusion, head, subset):
    if fusion not in FUSION_SETUPS:
        pytest.fail(f"fusion {fusion!r} is registered but has no entry in FUSION_SETUPS "
                    f"(tests/models/test_zoo_matrix.py): add its tiny backbone and the modalities to build it with")
    model = _model(fusion, head)
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(len(subset))
    inputs = {m: torch.randn(BATCH, get_modality(m).channels, *SIZE, generator=gen) for m in subset}
    torch.manual_seed(1)  # dropout / drop path draws
    out = model(inputs)
    assert out.logits.shape == (BATCH, NUM_CLASSES, *SIZE)
    assert torch.isfinite(out.logits).all()
    out.logits.mean().backward()

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = {n: p.grad for n, p in params if p.grad is not None}
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    assert any(g.abs().sum() > 0 for g in grads.values()), "no parameter got a non-zero gradient"
    # every present modality with parameters of its own (a name component equal to the modality) trains
    for m in subset:
        own = [n for n, _ in params if m in n.split(".")]
        if own:
            nonzero = [n for n in own if n in grads and grads[n].abs().sum() > 0]
            assert nonzero, f"{m} is present but none of its {len(own)} parameters got a gradient ({own[:3]}, ...)"
    # modalities not passed get no gradient through their own parameters (they are not computed)
    for m in set(FUSION_SETUPS[fusion][1]) - set(subset):
        leaked = [n for n, _ in params if m in n.split(".") and n in grads and grads[n].abs().sum() > 0]
        assert not leaked, f"{m} is not passed but its parameters got gradients: {leaked[:3]}"
