"""The ``omni`` fusion: OmniSegmentor's encoder (:mod:`rgbx.models.backbones.omni`) as a fusion encoder.

RGB plus any set of supplementary modalities (depth, thermal, lidar, event, hha, ...): each supplementary modality has
its own stem and its own MLP in every block, the DFormer token mixer that fuses them with RGB is shared, and in every
block the present supplementary states are summed and layer-normalised before the fusion (see the backbone module
for the block and for which parts are the paper's and which rgbx's). Fusion happens inside the blocks, so ``fused``
is the RGB path's four stage maps, as in DFormer; ``features`` holds the RGB path's maps under ``"rgb"`` and each
computed supplementary modality's own (half-width) state maps under its name.

Modalities: ``"rgb"`` and at least one other registered modality; each supplementary modality's stem takes that
modality's channel count (so HHA is used whole, unlike the ``dformer`` fusion, which takes its channel 0).

Absent modalities (not passed, absent for the whole batch, or absent for some samples per ``present``):

* a supplementary modality absent for the whole batch is not computed: none of its modules run (no stem, no MLP);
* a supplementary modality absent for some samples is computed for the batch, but it is left out of those samples'
  sum (the sum runs over the modalities present in each sample, then the LayerNorm), and its input for those samples
  is replaced by its fill value (``ModalitySpec.fill``) before the stem, so that in training BatchNorm statistics see
  no absent content either. A sample's result is then exactly what running that sample alone without the modality
  gives (in eval mode; BatchNorm in training mixes batch statistics, as always);
* a sample with no present supplementary modality is encoded by the RGB path with a zero supplementary term
  (``ê = 0`` in every block), which is also what an RGB-only batch gets;
* rgb absent (not passed, or ``present`` False for a sample): the RGB path still runs (it carries the fusion) on the
  RGB fill image (0, the dataset-mean image, as in the ``dformer`` fusion), so a sample with only supplementary
  modalities is encoded from a mean-RGB image plus their aggregate;
* a sample with no present modality at all gets all-zero ``fused`` maps.

``features[m]`` exists for the modalities present for at least one sample (:meth:`FusionEncoder.computed`) and is
zero for samples where ``m`` is absent; so nothing an absent sample holds in ``inputs`` reaches any output. A
supplementary modality's last-stage map is its state entering the encoder's last block (which updates no
supplementary state).

Pretraining → fine-tuning: build the model for every modality it may ever see; a step may pass RGB plus one
supplementary modality (the others get no gradient that step). To fine-tune on another modality set, pass the
pretrained encoder weights as ``pretrained`` (an rgbx model file, an omni encoder state dict, or a DFormer RGB-D
checkpoint) and, optionally, ``fusion_options={"init_from": "depth"}``: modalities the weights lack get copies of
that modality's stem and MLPs (:func:`rgbx.models.backbones.omni.extend_state_dict`; ``docs/models/omni.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rgbx.errors import ConfigError
from rgbx.models.backbones.omni import OMNI_VARIANTS, OmniEncoder
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder
from rgbx.models.layers import mask_absent
from rgbx.models.registries import BACKBONES, FUSIONS

__all__ = ["OmniFusion"]


@FUSIONS.register("omni")
class OmniFusion(FusionEncoder):
    """OmniSegmentor encoder as a fusion (see the module docstring).

    Args:
        backbone: ``"omni_t"``, ``"omni_s"``, ``"omni_b"``, ``"omni_l"`` (DFormer-T/S/B/L sizes) or the test
            variant ``"omni_nano"``.
        modalities: ``"rgb"`` and one or more supplementary modalities (any order; the supplementary order is the
            order of their entries).
        drop_path_rate: stochastic depth.
        attn_impl: the window attention's implementation, ``"sdpa"`` or ``"eager"``.
        pretrained: encoder weights to start from (see :func:`rgbx.models.backbones.omni.load_omni_weights`),
            extended to this model's modality set.
        init_from: the supplementary modality of ``pretrained`` that modalities it lacks are initialised from (or
            new name → source name); default: its first one.
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    def __init__(
        self,
        backbone: str = "omni_t",
        modalities: Sequence[str] = ("rgb", "depth"),
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        pretrained: str = "",
        init_from: str | Mapping[str, str] | None = None,
        input_encoding: Mapping | None = None,
    ):
        super().__init__(modalities, input_encoding)
        supplementary = {m: c for m, c in self.in_channels.items() if m != "rgb"}
        if "rgb" not in self.modalities or not supplementary:
            raise ConfigError(
                f"the omni fusion needs 'rgb' and at least one supplementary modality, got {list(self.modalities)}"
            )
        if backbone not in OMNI_VARIANTS:
            raise ConfigError(f"the omni fusion needs an omni backbone ({', '.join(OMNI_VARIANTS)}), got {backbone!r}")
        self.supplementary = tuple(supplementary)
        self.encoder: OmniEncoder = BACKBONES.get(backbone)(
            in_channels=None,
            drop_path_rate=drop_path_rate,
            attn_impl=attn_impl,
            pretrained=pretrained,
            supplementary=supplementary,
            init_from=init_from,
        )
        self.feature_info = self.encoder.feature_info

    def _masked_input(self, name: str, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` where the modality is present, its fill value elsewhere (``mask`` None: present everywhere)."""
        if mask is None:
            return x
        return torch.where(mask.view(-1, 1, 1, 1), x, self.input_encoding.fill_tensor(name, x.dtype))

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> EncoderOutput:
        """Encode.

        Args:
            inputs: modality → (B, C_m, H, W); any non-empty subset of :attr:`modalities`.
            present: modality → (B,) bool; missing entries (or ``None``) mean present for every sample.

        Returns:
            :class:`EncoderOutput`: ``fused`` = the 4 RGB-path maps (B, d_i, H/r_i, W/r_i); ``features`` =
            ``{"rgb": RGB-path maps, m: m's state maps (B, d_i/2, ...)}`` for the modalities present for some
            sample.
        """
        inputs, present = self.prepare(inputs, present)
        names = self.computed(present)
        certain = getattr(present, "certain", frozenset())
        masks = {m: (None if m in certain else present[m]) for m in present}
        # computed() falls back to the first passed modality when none is present; that one is not run here
        # (the RGB path gives the shapes), only given zero features below.
        nothing = len(names) == 1 and masks[names[0]] is not None and not bool(masks[names[0]].any())
        run = [] if nothing else [m for m in names if m != "rgb"]

        ref = next(iter(inputs.values()))
        if "rgb" in inputs:
            rgb = self._masked_input("rgb", inputs["rgb"], masks["rgb"])
        else:
            rgb = self.input_encoding.fill_tensor("rgb", ref.dtype).expand(ref.shape[0], -1, *ref.shape[2:]).contiguous()
        supplementary = {m: self._masked_input(m, inputs[m], masks[m]).to(rgb.dtype) for m in run}
        outs, outs_e = self.encoder.forward_features(rgb, supplementary, {m: masks[m] for m in run})

        if any(mask is None for mask in masks.values()):
            fused = outs
        else:
            any_present = torch.stack(list(masks.values()), dim=1).any(dim=1)
            fused = [mask_absent(x, any_present) for x in outs]
        features: dict[str, list[torch.Tensor]] = {}
        for m in names:
            if m == "rgb":
                maps = outs
            elif m in outs_e:
                maps = outs_e[m]
            else:  # the no-modality-present fallback: zeros of m's shapes, nothing run
                maps = [x.new_zeros((x.shape[0], x.shape[1] // 2, *x.shape[2:])) for x in outs]
            features[m] = maps if masks[m] is None else [mask_absent(x, masks[m]) for x in maps]
        return EncoderOutput(fused=fused, features=features, present=present)
