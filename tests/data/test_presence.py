"""PresenceMasks: what is known about presence on the host decides what the model computes, so neither modality
dropout nor the fusion reads a mask back from the device. Tested by giving device masks that contradict the host
ones: the host's answer must win (a device read-back would give the other one)."""

from __future__ import annotations

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
