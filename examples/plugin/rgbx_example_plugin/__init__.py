"""An example rgbx plugin (docs/extending.md): importing it registers

* the fusion ``gated`` (:mod:`.gated_fusion`): ``model.fusion=gated``;
* the segmentation loss ``ce_dice`` (:mod:`.dice_loss`): ``method.loss=ce_dice``, in any method;
* the method ``dropout_consistency`` (:mod:`.consistency`): ``method.name=dropout_consistency``.

Installed (``pip install -e examples/plugin``), rgbx finds it through its entry point; otherwise
``rgbx train ... --import examples/plugin/rgbx_example_plugin/gated_fusion.py`` (each file also works alone).
"""

from rgbx_example_plugin import consistency, dice_loss, gated_fusion

__all__ = ["consistency", "dice_loss", "gated_fusion"]
