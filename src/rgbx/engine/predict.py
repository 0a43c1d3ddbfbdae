"""Inference on samples: predictions as label PNGs, colourised masks and panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rgbx.data.sample import Sample, collate, normalize_sample
from rgbx.engine.fastpath import SpeedOptions, autocast, backend_flags, prepare_inference
from rgbx.engine.inference import SlidingWindow, predict_logits
from rgbx.visualize import colorize, make_panel, save_image


class Predictor:
    """Wraps a trained model with its dataset info (classes, palette) for prediction on any modality subset.

    ``speed``: speed switches to predict with (e.g. ``SpeedOptions.fast(device)``; None = the model's own fp32
    arithmetic). Precision, attention, memory layout, TF32 and compilation apply; CUDA-graph capture does not
    (inputs vary in size). ``scales`` / ``flip`` / ``window`` / ``scale_rule``: test-time averaging and
    sliding-window inference (:func:`rgbx.engine.inference.predict_logits`)."""

    def __init__(self, model: torch.nn.Module, info: dict, device: str | torch.device = "cpu",
                 scales: tuple[float, ...] = (1.0,), flip: bool = False, speed: SpeedOptions | None = None,
                 window: SlidingWindow | None = None, scale_rule: str = "rgbx"):
        self.model = model.to(device).eval()
        self.speed = speed
        if speed is not None:
            prepare_inference(self.model, speed)
        self.scales, self.flip, self.window, self.scale_rule = tuple(scales), flip, window, scale_rule
        self.device = torch.device(device)
        dataset = info.get("dataset", {})
        n = model.config.num_classes
        self.classes = dataset.get("classes") or [str(i) for i in range(n)]
        from rgbx.data.description import default_palette

        self.palette = [tuple(c) for c in dataset.get("palette") or default_palette(n)]
        self.ignore_index = dataset.get("ignore_index", 255)

    @torch.no_grad()
    def predict(self, sample: Sample) -> torch.Tensor:
        """(H, W) int64 class map for one sample in physical units (modalities the model lacks are ignored)."""
        usable = {m: x for m, x in sample["inputs"].items() if m in self.model.modalities}
        if not usable:
            raise ValueError(f"sample {sample['meta'].get('id')} has none of the model's modalities "
                             f"({', '.join(self.model.modalities)})")
        batch = collate([normalize_sample({**sample, "inputs": usable, "label": None})]).to(self.device)
        precision = self.speed.precision if self.speed is not None else "fp32"
        with backend_flags(self.speed), autocast(self.device, precision):
            logits = predict_logits(self.model, batch.inputs, batch.present, self.scales, self.flip,
                                    self.window, self.scale_rule)
        return logits.float().argmax(1)[0].cpu()

    def write(self, sample: Sample, pred: torch.Tensor, out_dir: Path, panel: bool = True) -> dict[str, Path]:
        out_dir = Path(out_dir)
        sid = str(sample["meta"].get("id", "sample"))
        paths = {"label": out_dir / "labels" / f"{sid}.png", "color": out_dir / "color" / f"{sid}.png"}
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        pred_np = pred.numpy()
        from PIL import Image

        Image.fromarray(pred_np.astype(np.uint8 if pred_np.max(initial=0) < 256 else np.uint16)).save(paths["label"])
        save_image(paths["color"], colorize(pred_np, self.palette, self.ignore_index))
        if panel:
            paths["panel"] = out_dir / "panels" / f"{sid}.png"
            paths["panel"].parent.mkdir(parents=True, exist_ok=True)
            label = sample.get("label")
            image = make_panel(sample["inputs"], pred_np, None if label is None else label.numpy(), palette=self.palette,
                               class_names=self.classes, ignore_index=self.ignore_index, title=sid)
            save_image(paths["panel"], image)
        return paths
