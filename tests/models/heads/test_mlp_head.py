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
