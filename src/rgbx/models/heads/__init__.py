"""Decode heads. Importing this package registers every head family in ``HEADS``: ``mlp`` (SegFormer all-MLP),
``ham`` (light Hamburger / NMF, SegNeXt and DFormer) and ``fcn`` (mmseg FCN, also the auxiliary head)."""

from rgbx.models.heads import fcn, ham, mlp
from rgbx.models.heads.fcn import FCNHead
from rgbx.models.heads.ham import LightHamHead
from rgbx.models.heads.mlp import MLPHead

__all__ = ["FCNHead", "LightHamHead", "MLPHead", "fcn", "ham", "mlp"]
