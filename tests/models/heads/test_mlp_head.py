import torch

from rgbx.models import HEADS
from rgbx.models.heads.mlp import MLPHead


def test_mlp_head_shapes_and_structure():
    head = HEADS.get("mlp")(in_channels=[16, 32, 64, 128], num_classes=7, channels=24)
    assert isinstance(head, MLPHead)
    assert [lin.in_features for lin in head.linear] == [16, 32, 64, 128]
    assert head.fuse[0].in_channels == 4 * 24 and isinstance(head.fuse[1], torch.nn.BatchNorm2d)
    assert head.dropout.p == 0.1
    feats = [torch.randn(2, c, -(-48 // r), -(-80 // r)) for c, r in zip([16, 32, 64, 128], [4, 8, 16, 32])]
    out = head(feats)
    assert out.shape == (2, 7, 12, 20)
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def _fold_matches_reference_order(head, feats):
    """Same logits and gradients with the head folded (set_fold) and in the reference order, train and eval mode."""
    import copy

    folded = copy.deepcopy(head)
    folded.set_fold(True)
    for train in (True, False):
        head.train(train), folded.train(train)
        outs = []
        for h in (head, folded):
            h.zero_grad()
            torch.manual_seed(3)  # the same dropout draw
            out = h(feats)
            out.square().mean().backward()
            outs.append((out.detach(), {n: p.grad.clone() for n, p in h.named_parameters()}))
        (ref, ref_grads), (got, grads) = outs
        assert torch.allclose(got, ref, atol=1e-10), (got - ref).abs().max()
        scale = max(g.abs().max().item() for g in ref_grads.values())
        for name, g in ref_grads.items():  # gradients equal up to rounding (some are 0 in exact arithmetic)
            assert torch.allclose(grads[name], g, atol=1e-9 * scale), name
    assert list(folded.state_dict()) == list(head.state_dict())  # the same weights, saved the same way


def test_folded_mlp_head_is_the_same_function():
    torch.manual_seed(0)
    head = MLPHead(in_channels=[16, 32, 64, 128], num_classes=5, channels=24).double()
    feats = [torch.randn(2, c, -(-48 // r), -(-80 // r), dtype=torch.float64)
             for c, r in zip([16, 32, 64, 128], [4, 8, 16, 32])]
    _fold_matches_reference_order(head, feats)
