"""Fusion encoders. Importing this package registers every fusion family in ``FUSIONS``."""

from rgbx.models.fusions import cmnext as cmnext  # registers fusion 'cmnext'
from rgbx.models.fusions import cmx, dformer, ktb, mean
from rgbx.models.fusions import dformerv2 as dformerv2  # registers fusion 'dformerv2'
from rgbx.models.fusions import omni as omni  # registers fusion 'omni'
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder
from rgbx.models.fusions.cmx import CMXFusion
from rgbx.models.fusions.dformer import DFormerFusion
from rgbx.models.fusions.ktb import KTBFusion
from rgbx.models.fusions.mean import MeanFusion

__all__ = [
    "CMXFusion",
    "DFormerFusion",
    "EncoderOutput",
    "FusionEncoder",
    "KTBFusion",
    "MeanFusion",
    "cmx",
    "dformer",
    "ktb",
    "mean",
]
