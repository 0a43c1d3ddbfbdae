"""The segmentation losses (``method.loss``): cross-entropy, and OHEM against its plain definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rgbx.engine.config import MethodConfig, load_config
from rgbx.errors import ConfigError
from rgbx.methods import METHODS
from rgbx.methods.losses import build_segmentation_loss, cross_entropy, ohem_cross_entropy
from tests.methods.helpers import tiny_batch, tiny_model


def ohem_by_definition(logits, label, thresh=0.7, ignore_index=255, weight=None, n_min=None):
    """OHEM written the plain way: boolean selection and a top-k of a count read on the host."""
    if n_min is None:
        n_min = int((label != ignore_index).sum()) // 16
    losses = F.cross_entropy(logits, label, weight=weight, ignore_index=ignore_index, reduction="none").flatten()
    hard = losses[losses > -math.log(thresh)]
    if hard.numel() < n_min:
        hard = losses.topk(n_min).values
    return hard.mean()


def test_cross_entropy_matches_torch_and_is_zero_without_labelled_pixels():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    label = torch.randint(0, 3, (2, 4, 5))
    label[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(cross_entropy(logits, label, 255), F.cross_entropy(logits, label, ignore_index=255))
    torch.testing.assert_close(cross_entropy(logits, label, 255, w),
                               F.cross_entropy(logits, label, weight=w, ignore_index=255))
    empty = cross_entropy(logits, torch.full_like(label, 255), 255)
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("confidence,regime", [(0.0, "many hard pixels"), (6.0, "fewer hard pixels than n_min")])
def test_ohem_equals_its_definition_in_both_regimes(confidence, regime):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 24, 32), generator=g)
    label[:, :4] = 255
    logits = torch.randn(2, 5, 24, 32, generator=g)
    logits += confidence * F.one_hot(label.clamp(max=4), 5).permute(0, 3, 1, 2)  # most pixels easy when large
    logits.requires_grad_(True)
    plain = logits.detach().clone().requires_grad_(True)

    losses = F.cross_entropy(logits.detach(), label, ignore_index=255, reduction="none")
    n_hard, n_min = int((losses > -math.log(0.7)).sum()), int((label != 255).sum()) // 16
    assert (n_hard >= n_min) == (regime == "many hard pixels")  # the case this parameter is meant to cover

    ours = ohem_cross_entropy(logits, label, 255)
    reference = ohem_by_definition(plain, label)
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(logits.grad, plain.grad)
    assert ours > cross_entropy(logits.detach(), label, 255)  # the hard pixels' mean lies above the plain mean


def test_ohem_with_class_weights_other_thresholds_and_no_labelled_pixel():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 16, 16, generator=g)
    label = torch.randint(0, 3, (1, 16, 16), generator=g)
    w = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(ohem_cross_entropy(logits, label, 255, w, thresh=0.9),
                               ohem_by_definition(logits, label, 0.9, weight=w))
    # min_kept = 1 keeps every pixel: the unweighted mean, i.e. plain cross-entropy
    torch.testing.assert_close(ohem_cross_entropy(logits, label, 255, thresh=0.01, min_kept=1.0),
                               F.cross_entropy(logits, label))
    leaf = logits.clone().requires_grad_(True)
    empty = ohem_cross_entropy(leaf, torch.full_like(label, 255), 255)
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(leaf.grad).all()


def test_ohem_reads_nothing_back_to_the_host():
    """Traced whole (fullgraph: any data-dependent shape or read-back would break the graph), as a captured
    CUDA-graph training step needs."""
    compiled = torch.compile(ohem_cross_entropy, fullgraph=True, backend="eager")
    logits, label = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    torch.testing.assert_close(compiled(logits, label, 255), ohem_by_definition(logits, label))


def test_methods_train_with_the_configured_loss_and_log_it_by_name():
    model, batch = tiny_model().eval(), tiny_batch()  # eval: no dropout, the same logits at every call
    logits = model(batch.inputs, batch.present).logits
    ce = METHODS.get("supervised")(MethodConfig(), ignore_index=255).step(model, batch, torch.Generator())
    ohem = METHODS.get("supervised")(MethodConfig(loss="ohem", ohem_thresh=0.4), ignore_index=255).step(
        model, batch, torch.Generator())
    assert set(ce) == {"ce"} and set(ohem) == {"ohem"}
    torch.testing.assert_close(ce["ce"], cross_entropy(logits, batch.label, 255))
    torch.testing.assert_close(ohem["ohem"], ohem_by_definition(logits, batch.label, 0.4))
    pair = tiny_model(modalities=("rgb", "depth"))
    ktb = METHODS.get("ktb")(MethodConfig(name="ktb", loss="ohem"), ignore_index=255)
    ktb.prepare(pair, torch.device("cpu"))
    terms = ktb.step(pair, tiny_batch(("rgb", "depth")), torch.Generator().manual_seed(0))
    assert set(terms) == {"s1", "s2", "s3"} and all(torch.isfinite(v) for v in terms.values())


def test_a_wrong_loss_setting_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"method.loss 'focal'.*ce, ohem"):
        load_config(None, ["method.loss=focal"])
    with pytest.raises(ConfigError, match="method.ohem_thresh"):
        load_config(None, ["method.loss=ohem", "method.ohem_thresh=1.5"])
    with pytest.raises(ConfigError, match="method.ohem_min_kept"):
        build_segmentation_loss(MethodConfig(loss="ohem", ohem_min_kept=-0.1))
