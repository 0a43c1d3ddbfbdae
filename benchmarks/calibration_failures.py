"""Can the confidence tell that a sensor failed silently? A calibrated model (``rgbx calibrate``) is fed one sensor's
failed frames as they are (``blank``, ``saturated``, ``frozen``: rgbx.engine.robustness.SILENT_FAILURES) with the
other sensors clean, and believes every sensor present, so its confidence is the full set's (that set's temperature,
as the Predictor would use without sensor checks). Prints each case's pixel accuracy, mean confidence and ECE next to
the clean data's: where confidence stays high while accuracy falls, only the sensor checks
(``rgbx.data.sensor_health``) catch the failure.

    python benchmarks/calibration_failures.py runs/sensor_failures/cmx_seed0/calibrated_sets.safetensors \\
        --data runs/sensor_failures/heldout --split test
"""

from __future__ import annotations

import argparse

import torch

from rgbx.data import build_dataset, collate
from rgbx.data.transforms import EvalTransform
from rgbx.engine.calibration import ReliabilityHistogram, TemperatureScaling
from rgbx.engine.checkpoint import load_model
from rgbx.engine.robustness import SILENT_FAILURES
from rgbx.modalities import get_modality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model file rgbx calibrate wrote")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--failures", nargs="+", default=["blank", "saturated", "frozen"], choices=sorted(SILENT_FAILURES))
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(2)
    model, info = load_model(args.model)
    scaling = TemperatureScaling.from_info(info, args.model)
    modalities = tuple(model.modalities)
    t = scaling.temperature(modalities) if scaling is not None else 1.0
    dataset = build_dataset("folder", args.data, args.split, modalities=list(modalities), transform=EvalTransform())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate)
    desc = dataset.description
    hist = {"clean": ReliabilityHistogram(desc.num_classes, desc.ignore_index)}
    cases = [(m, f) for m in modalities for f in args.failures]
    hist.update({f"{m} {f}": ReliabilityHistogram(desc.num_classes, desc.ignore_index) for m, f in cases})
    carry: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for batch in loader:
            phys = {m: get_modality(m).denormalize(batch.inputs[m]) for m in modalities}

            logits = model(batch.inputs, batch.present).logits
            hist["clean"].update((logits / t).softmax(1), batch.label)
            for m, f in cases:
                x = phys[m]  # frozen: each frame replaced by the one before (the first sample: its own)
                previous = torch.cat([carry[m][None] if m in carry else x[:1], x[:-1]])
                bad = SILENT_FAILURES[f][0](x, previous, get_modality(m))
                logits = model({**batch.inputs, m: get_modality(m).normalize(bad)}, batch.present).logits
                hist[f"{m} {f}"].update((logits / t).softmax(1), batch.label)
            carry = {m: phys[m][-1] for m in modalities}
    print(f"{args.model} on {args.data} [{args.split}], temperature {t:.3f} ({'+'.join(modalities)})")
    print("| fed to the model | pixel accuracy | mean confidence | ECE |")
    print("|---|---|---|---|")
    for name, h in hist.items():
        m = h.compute()
        print(f"| {name} | {100 * m.accuracy:.2f} | {100 * m.confidence:.2f} | {100 * m.ece:.2f} |")


if __name__ == "__main__":
    main()
