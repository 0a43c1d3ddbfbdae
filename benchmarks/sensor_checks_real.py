"""The sensor checks (``rgbx.data.sensor_health``) on real frames, where none should fail: the CamVid RGB frames of
``../shared/data/camvid`` (468 street scenes at dusk and daylight, in file-name order: sequences of a driving video)
and the real RGB-D frame of ``../shared/data/real_samples``. Prints per check how many frames failed and how close
the nearest frame came to each threshold (the smallest contrast, the largest saturated share, ...).

    python benchmarks/sensor_checks_real.py                  # the default rules
    python benchmarks/sensor_checks_real.py --frozen-after 1  # a duplicate frame anywhere in the sequences
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rgbx.data.files import read_modality_file
from rgbx.data.sensor_health import HealthRules, SensorMonitor
from rgbx.modalities import get_modality

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=SHARED, help=f"the shared data folder (default {SHARED})")
    p.add_argument("--frozen-after", type=int, default=HealthRules.frozen_after)
    args = p.parse_args()
    camvid = args.shared / "camvid"
    frames = sorted((camvid / "train").glob("*.png")) + sorted((camvid / "val").glob("*.png"))
    if not frames:
        raise SystemExit(f"no CamVid frames under {camvid}")
    rules = HealthRules(frozen_after=args.frozen_after)
    monitor = SensorMonitor(rules)
    failed: dict[str, list[str]] = {}
    lowest_contrast, most_saturated = (float("inf"), ""), (0.0, "")
    for path in frames:
        _, statuses = monitor.screen({"rgb": read_modality_file(path, "rgb")})
        st = statuses["rgb"]
        for check in st.failures:
            failed.setdefault(check, []).append(path.name)
        lowest_contrast = min(lowest_contrast, (st.contrast, path.name))
        most_saturated = max(most_saturated, (st.saturated, path.name))
    print(f"CamVid RGB, {len(frames)} frames in file-name order (frozen_after={rules.frozen_after}): "
          f"{sum(map(len, failed.values()))} failed checks {dict((k, len(v)) for k, v in failed.items())}")
    print(f"  lowest contrast {lowest_contrast[0]:.3f} of the normal std ({lowest_contrast[1]}; fails below "
          f"{rules.min_contrast}); largest saturated share {100 * most_saturated[0]:.2f} % ({most_saturated[1]}; "
          f"fails above {100 * rules.max_saturated:.0f} %)")
    real = args.shared / "real_samples"
    if (real / "rgbd_indoor_rgb.png").is_file():
        _, statuses = SensorMonitor(rules).screen({"rgb": read_modality_file(real / "rgbd_indoor_rgb.png", "rgb"),
                                                   "depth": read_modality_file(real / "rgbd_indoor_depth.png", "depth")})
        rgb, depth = statuses["rgb"], statuses["depth"]
        print(f"real RGB-D frame, {rgb.describe()}: contrast {rgb.contrast:.3f}, saturated {100 * rgb.saturated:.2f} %")
        print(f"real RGB-D frame, {depth.describe()}: {100 * depth.coverage:.1f} % of pixels measured (fails at "
              f"{100 * rules.coverage_floor(get_modality('depth')):.0f} %), contrast of the measured "
              f"{depth.contrast:.3f} (fails below {rules.min_measured_contrast})")


if __name__ == "__main__":
    main()
