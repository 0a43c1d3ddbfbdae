"""PresenceMasks: what is known about presence on the host decides what the model computes, so neither modality
dropout nor the fusion reads a mask back from the device. Tested by giving device masks that contradict the host
ones: the host's answer must win (a device read-back would give the other one)."""

from __future__ import annotations

import pytest
import torch

from rgbx.data.sample import Batch, PresenceMasks, host_masks
from rgbx.methods.base import drop_modalities
from rgbx.methods.ktb import mask_one_modality
from rgbx.models import create_model


def _batch(b=4):
    inputs = {"rgb": torch.randn(b, 3, 16, 16), "depth": torch.randn(b, 1, 16, 16)}
    host = {"rgb": torch.ones(b, dtype=torch.bool), "depth": torch.tensor([True, False, True, True])[:b]}
    return inputs, host


def test_host_knowledge_wins_over_the_device_masks():
    inputs, host = _batch()
    lying = {m: torch.zeros_like(v) for m, v in host.items()}  # "device" masks that say nobody has anything
    present = PresenceMasks(lying, certain=["rgb"], host=host)
    assert present.any_present("rgb") and present.any_present("depth")
    assert torch.equal(host_masks(present, ["rgb", "depth"]), torch.stack([host["rgb"], host["depth"]], 1))
    # without host knowledge the device masks are read
    assert not PresenceMasks(lying).any_present("depth")


def test_the_fusion_keeps_host_knowledge_through_prepare():
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16)
    inputs, host = _batch()
    lying = {"rgb": torch.ones(4, dtype=torch.bool), "depth": torch.zeros(4, dtype=torch.bool)}
    _, present = model.encoder.prepare(inputs, PresenceMasks(lying, certain=["rgb"], host=host))
    assert present.certain == {"rgb"} and torch.equal(present.host["depth"], host["depth"])
    assert model.encoder.computed(present) == ["rgb", "depth"]  # host says depth is there for 3 samples


def test_dropout_keeps_host_and_device_masks_in_step():
    inputs, host = _batch()
    batch = Batch(dict(inputs), PresenceMasks(dict(host), certain=["rgb"], host=dict(host)))
    for seed in range(20):
        out = drop_modalities(batch, 0.5, torch.Generator().manual_seed(seed))
        assert isinstance(out.present, PresenceMasks)
        for m in ("rgb", "depth"):
            assert torch.equal(out.present[m], out.present.host[m]), (seed, m)
            if m in out.present.certain:
                assert bool(out.present[m].all())
        assert bool(torch.stack([out.present[m] for m in ("rgb", "depth")]).any(0).all())  # one kept per sample
        masked = mask_one_modality(batch, 1.0, torch.Generator().manual_seed(seed))
        for m in ("rgb", "depth"):
            assert torch.equal(masked.present[m], masked.present.host[m])
        assert not masked.present.certain >= {"rgb", "depth"}  # every full sample lost one of the two


def test_with_modalities_keeps_the_host_view():
    inputs, host = _batch()
    batch = Batch(dict(inputs), PresenceMasks(dict(host), certain=["rgb"], host=dict(host)))
    view = batch.with_modalities(["depth"])
    assert isinstance(view.present, PresenceMasks) and set(view.present) == {"depth"}
    assert view.present.certain == frozenset() and set(view.present.host) == {"depth"}


def _three_modality_batch(b, absent_thermal_every=3):
    """b samples of rgb / depth / thermal, thermal absent in every ``absent_thermal_every``-th sample."""
    g = torch.Generator().manual_seed(0)
    inputs = {"rgb": torch.randn(b, 3, 2, 2, generator=g), "depth": torch.randn(b, 1, 2, 2, generator=g),
              "thermal": torch.randn(b, 1, 2, 2, generator=g)}
    present = {m: torch.ones(b, dtype=torch.bool) for m in inputs}
    present["thermal"][::absent_thermal_every] = False
    return inputs, present


def test_dropout_decided_on_the_device_draws_like_the_host_and_reads_nothing_back():
    """PresenceMasks(on_device=True): modality dropout draws with the device's generator (a captured CUDA graph
    draws anew at every replay) and gives the host draw's distribution: each present modality dropped at rate p,
    at least min_keep of a sample's modalities kept, absent ones never revived, dropped ones filled."""
    b = 30000
    inputs, present = _three_modality_batch(b)
    names = list(inputs)
    for p, min_keep in ((0.4, 1), (0.6, 2)):
        host_batch = Batch(dict(inputs), PresenceMasks(dict(present), certain=["rgb", "depth"], host=dict(present)))
        device_batch = Batch(dict(inputs), PresenceMasks(dict(present), on_device=True))
        host = drop_modalities(host_batch, p, torch.Generator().manual_seed(1), min_keep=min_keep)
        torch.manual_seed(1)
        dev = drop_modalities(device_batch, p, torch.Generator().manual_seed(99), min_keep=min_keep)
        assert dev.present.on_device and not dev.present.certain and not dev.present.host
        had = torch.stack([present[m] for m in names], 1)
        for out in (host, dev):
            kept = torch.stack([out.present[m] for m in names], 1)
            assert not (kept & ~had).any()  # an absent modality is never revived
            assert bool((kept.sum(1) >= had.sum(1).clamp(max=min_keep)).all())
            for m in names:  # dropped samples hold the fill value (0 for these specs)
                gone = had[:, names.index(m)] & ~out.present[m]
                assert bool((out.inputs[m][gone] == 0).all())
        rates = [[1 - float(out.present[m][present[m]].float().mean()) for m in names] for out in (host, dev)]
        for host_rate, dev_rate in zip(*rates, strict=True):
            assert abs(host_rate - dev_rate) < 0.015, rates
        # the device draw follows the torch seed, not the host generator
        torch.manual_seed(1)
        again = drop_modalities(device_batch, p, torch.Generator().manual_seed(7), min_keep=min_keep)
        assert all(torch.equal(again.present[m], dev.present[m]) for m in names)


def test_batch_with_every_modality_adds_the_missing_ones_as_absent():
    inputs, present = _three_modality_batch(4)
    del inputs["thermal"], present["thermal"]
    batch = Batch(dict(inputs), PresenceMasks(dict(present), on_device=True))
    full = batch.with_every(["rgb", "depth", "thermal"])
    assert full.inputs["thermal"].shape == (4, 1, 2, 2) and not bool(full.present["thermal"].any())
    assert full.present.on_device and batch.with_every(["rgb"]) is batch
    host = Batch(dict(inputs), PresenceMasks(dict(present), certain=["rgb", "depth"], host=dict(present)))
    assert not host.with_every(["rgb", "depth", "thermal"]).present.any_present("thermal")


CASES = {  # rgb, depth presence per sample
    "depth in some samples": ([True] * 4, [True, False, True, False]),
    "depth in none": ([True] * 4, [False] * 4),
    "each sample one of the two": ([True, False, True, True], [False, True, True, False]),
}


@pytest.mark.parametrize("backbone, fusion, head", [("mit_nano", "cmx", "mlp"), ("mit_nano", "mean", "mlp"),
                                                    ("dformer_nano", "dformer", "ham"), ("omni_nano", "omni", "fcn"),
                                                    ("mit_nano", "cmnext", "mlp"), ("mit_nano", "ktb", "mlp")])
def test_masks_decided_on_the_device_give_what_host_decisions_give(backbone, fusion, head):
    """A model given PresenceMasks(on_device=True) computes every branch and masks the absent samples on the device
    (nothing read back, what a captured step needs); the logits equal those of the same masks known on the host,
    where a modality no sample has is not computed at all."""
    torch.manual_seed(0)
    model = create_model(backbone=backbone, fusion=fusion, head=head, modalities=["rgb", "depth"], num_classes=4,
                         head_channels=16).eval()
    g = torch.Generator().manual_seed(0)
    x = {"rgb": torch.randn(4, 3, 32, 32, generator=g), "depth": torch.randn(4, 1, 32, 32, generator=g)}
    for case, (rgb, depth) in CASES.items():
        masks = {"rgb": torch.tensor(rgb), "depth": torch.tensor(depth)}
        certain = [m for m, v in masks.items() if bool(v.all())]
        with torch.no_grad():
            ref = model(x, PresenceMasks(dict(masks), certain, dict(masks))).logits
            got = model(x, PresenceMasks(dict(masks), on_device=True)).logits
        assert torch.allclose(got, ref, atol=1e-5), (case, (got - ref).abs().max())


def test_mmst_masking_decided_on_the_device_draws_like_the_host():
    """KTB's masking (one modality of a full sample, with probability p) drawn on the device: the host draw's rates,
    only full samples touched, exactly one modality each."""
    b = 30000
    inputs, present = _three_modality_batch(b)
    names = list(inputs)
    host = mask_one_modality(Batch(dict(inputs), PresenceMasks(dict(present), host=dict(present))), 0.5,
                             torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dev = mask_one_modality(Batch(dict(inputs), PresenceMasks(dict(present), on_device=True)), 0.5,
                            torch.Generator().manual_seed(5))
    assert dev.present.on_device
    had = torch.stack([present[m] for m in names], 1)
    full = had.all(1)
    for out in (host, dev):
        kept = torch.stack([out.present[m] for m in names], 1)
        lost = (had & ~kept).sum(1)
        assert bool((lost[~full] == 0).all()) and bool((lost <= 1).all())
        assert abs(float(lost[full].float().mean()) - 0.5) < 0.015
        for j in range(len(names)):  # each modality chosen uniformly among the masked samples
            assert abs(float((had & ~kept)[full, j].float().mean()) - 0.5 / len(names)) < 0.015
