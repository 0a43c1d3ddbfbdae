"""One synthetic sample: scene → two renders → the five sensor images and the label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rgbx.data.synth import sensors
from rgbx.data.synth.classes import CONDITIONS
from rgbx.data.synth.render import render
from rgbx.data.synth.scene import make_scene
from rgbx.errors import RgbxError


def check_size(size) -> tuple[int, int]:
    """``(height, width)`` as two positive ints, or :class:`RgbxError`."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise RgbxError(f"size must be (height, width), got {size!r}") from None
    if (
        not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (h, w))
        or h < 1
        or w < 1
    ):
        raise RgbxError(f"size must be two positive integers (height, width), got {size!r}")
    return int(h), int(w)


def check_conditions(conditions: Sequence[str] | None) -> tuple[str, ...]:
    """The conditions to draw from (all when None) in ``CONDITIONS`` order, or :class:`RgbxError`.

    The order is canonical so that e.g. ``["fog", "night"]`` and ``{"night", "fog"}`` draw the same samples.
    """
    if conditions is None:
        return CONDITIONS
    if isinstance(conditions, str):
        conditions = [conditions]
    try:
        given = set(conditions)
    except TypeError:
        raise RgbxError(f"conditions must be a list of condition names, got {conditions!r}") from None
    if not given:
        raise RgbxError(f"conditions must name at least one of {', '.join(CONDITIONS)}")
    unknown = sorted(map(repr, given - set(CONDITIONS)))
    if unknown:
        raise RgbxError(f"unknown condition(s) {', '.join(unknown)}; valid: {', '.join(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in given)


def _check_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise RgbxError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def render_sample(
    seed: int,
    index: int,
    size: tuple[int, int] = (240, 320),
    condition: str | None = None,
    conditions: Sequence[str] | None = None,
) -> dict:
    """Render sample ``index`` of the synthetic dataset with ``seed``.

    The sample depends only on ``(seed, index)`` (and ``size``): the condition is drawn from
    ``np.random.default_rng([seed, index])``, the scene and every sensor from their own streams spawned from the
    same seed sequence, so forcing ``condition`` changes the RGB and event images only, never the scene, depth,
    thermal, LiDAR or label.

    Args:
        seed, index: non-negative integers.
        size: (height, width) in pixels.
        condition: one of ``CONDITIONS``; None = drawn uniformly from ``conditions``.
        conditions: the conditions to draw from when ``condition`` is None (default: all).

    Returns:
        ``{"rgb": (3,H,W) uint8, "depth": (1,H,W) uint16 mm, "thermal": (1,H,W) uint8, "lidar": (1,H,W) uint16 mm,
        "event": (2,H,W) uint8, "label": (H,W) uint8, "condition": str}``.
    """
    seed = _check_int("seed", seed)
    index = _check_int("index", index)
    h, w = check_size(size)
    choices = check_conditions(conditions)
    if condition is not None and condition not in CONDITIONS:
        raise RgbxError(f"unknown condition {condition!r}; valid: {', '.join(CONDITIONS)}")

    root = np.random.default_rng([seed, index])
    drawn = choices[int(root.integers(len(choices)))]
    condition = condition or drawn
    scene_rng, light_rng, rgb_rng, depth_rng, thermal_rng, lidar_rng, event_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(7)
    )

    scene = make_scene(scene_rng, h, w)
    frame = render(scene, scene.camera, scene.prims, with_temp=True)
    frame2 = render(scene, scene.camera2, [p.moved() for p in scene.prims], with_temp=False)
    light = sensors.lighting(scene, condition, light_rng)
    rad1 = sensors.radiance(frame, light)
    rad2 = sensors.radiance(frame2, light)
    return {
        "rgb": sensors.rgb_image(scene, frame, light, rad1, condition, rgb_rng),
        "depth": sensors.depth_image(frame, depth_rng),
        "thermal": sensors.thermal_image(scene, frame, thermal_rng),
        "lidar": sensors.lidar_image(scene, frame, lidar_rng),
        "event": sensors.event_image(rad1, rad2, condition, event_rng),
        "label": frame.label,
        "condition": condition,
    }
