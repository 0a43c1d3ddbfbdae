"""Sensor models: from rendered :class:`~rgbx.data.synth.render.Frame` s to the five modality images.

- ``rgb``: Lambertian shading under the condition's lighting (sun + sky ambient by day; moonlight, a dark sky
  and at most three street lamps at night), then the condition's optics and a noisy 8-bit camera: fog blends
  towards an airlight colour with ``exp(-β · distance)``; glare over-exposes and adds a large bloom; motion blur
  smears horizontally; night uses a tiny exposure and a high-gain (very noisy) sensor.
- ``depth``: z-depth with noise growing with distance², invalid (0) beyond a maximum range (30-45 m), on sky, at
  grazing angles, at depth discontinuities, in random blob-shaped holes and on shiny / dark surfaces.
- ``thermal``: surface temperatures mapped linearly to 0-255 around the ambient temperature, blurred, with
  temporal and column noise. Independent of light and fog.
- ``lidar``: 32-64 beams at fixed elevation angles (world frame, co-located with the camera), an azimuth step of
  2-3.5 pixels, projected into the image; range in mm, 0 = no return (sky, beyond range, dropouts - more on dark
  or shiny surfaces). The beams reach 80-120 m, but a uint16 in mm holds only 65.535 m, so returns beyond
  65.534 m are dropped (0), never clipped: the stored range is at most 65534. Independent of light and fog.
- ``event``: log-luminance change between the two renders (small camera motion, moving persons / cars),
  quantised by a per-pixel contrast threshold (0.15-0.25) into positive / negative counts, plus noise events.
  Computed from the scene radiance before exposure, i.e. with the dynamic range of an event camera: night
  (dim but not lost), glare and motion blur do not destroy it. Fog does: its airlight and flat light compress
  the log contrast at every distance, so nearly all events are lost, near objects included (over 40 scenes,
  pixels with any event: 19 % by day, 2 % in fog; within 6 m 13 % vs 3 %). The camera motion moves every edge,
  so a walking person's extra 5-15 cm hardly changes its events (3.5 events per pixel vs 3.0 on mannequins).

Every function takes its own random generator, so e.g. the depth of a sample is identical under every condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from rgbx.data.synth.render import Frame
from rgbx.data.synth.scene import Scene

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


@dataclass
class Lighting:
    """Illumination for one sample (linear radiance units; day surfaces are ~0-1).

    Attributes:
        sun_dir: (3,) unit vector to the sun (or moon). sun, ambient: (3,) colours × intensities.
        sky_zenith, sky_horizon: (3,) sky radiance. lamps: (K, 3) positions; lamp_color: (K, 3) intensities.
        fog_beta: extinction per metre (0 = clear); fog_color: (3,) airlight.
    """

    sun_dir: np.ndarray
    sun: np.ndarray
    ambient: np.ndarray
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    lamps: np.ndarray
    lamp_color: np.ndarray
    fog_beta: float = 0.0
    fog_color: np.ndarray | None = None


def lighting(scene: Scene, condition: str, rng: np.random.Generator) -> Lighting:
    """The lighting of ``condition`` for ``scene``."""
    b = rng.uniform(0.8, 1.2)
    sun = rng.uniform(0.8, 1.1) * np.array([1.0, 0.96, 0.9])
    ambient = rng.uniform(0.25, 0.4) * np.array([0.85, 0.9, 1.05])
    zenith = b * np.array([0.25, 0.45, 0.9])
    horizon = b * np.array([0.75, 0.82, 0.92])
    no_lamps = np.zeros((0, 3))
    if condition == "night":
        moon = rng.uniform(0.02, 0.05)
        return Lighting(
            scene.sun_dir,
            moon * np.array([0.6, 0.7, 1.0]),
            rng.uniform(0.01, 0.025) * np.array([0.5, 0.6, 1.0]),
            zenith * 0.004,
            horizon * 0.008,
            scene.lamps,
            scene.lamp_power[:, None] * np.array([1.0, 0.8, 0.55]),
        )
    if condition == "fog":
        visibility = rng.uniform(15.0, 60.0)
        grey = rng.uniform(0.55, 0.8) * np.array([0.95, 0.97, 1.0])
        return Lighting(
            scene.sun_dir, sun * 0.25, ambient * 1.4, grey, grey, no_lamps, no_lamps, 3.912 / visibility, grey
        )
    return Lighting(scene.sun_dir, sun, ambient, zenith, horizon, no_lamps, no_lamps)


def radiance(frame: Frame, light: Lighting) -> np.ndarray:
    """(H, W, 3) float32 linear scene radiance of a frame (fog included)."""
    n = frame.shading_normal
    albedo = frame.albedo
    ny = n[..., 1:2]
    cos_sun = np.maximum(n @ light.sun_dir.astype(np.float32), 0)[..., None]
    irr = light.ambient.astype(np.float32) * (0.65 + 0.35 * ny) + light.sun.astype(np.float32) * cos_sun
    if len(light.lamps):
        points = frame.points
        for pos, col in zip(light.lamps.astype(np.float32), light.lamp_color.astype(np.float32)):
            vec = pos - points
            d2 = np.maximum(np.einsum("hwc,hwc->hw", vec, vec), 0.25)
            cos = np.maximum(np.einsum("hwc,hwc->hw", vec, n), 0) / np.sqrt(d2)
            irr = irr + col * (cos / d2)[..., None]
    out = albedo * irr
    sky = frame.sky
    if sky.any():
        a = np.sqrt(np.clip(frame.rays[..., 1][sky], 0, 1))[:, None]
        out[sky] = light.sky_horizon * (1 - a) + light.sky_zenith * a
    if light.fog_beta > 0:
        trans = np.exp(-light.fog_beta * np.where(sky, np.inf, frame.dist))[..., None]
        out = out * trans + light.fog_color.astype(np.float32) * (1 - trans)
    return out.astype(np.float32)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(H, W) float32 smooth random field in [0, 1] with features ~``cell`` pixels wide."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------------- rgb


def rgb_image(
    scene: Scene, frame: Frame, light: Lighting, rad: np.ndarray, condition: str, rng: np.random.Generator
) -> np.ndarray:
    """(3, H, W) uint8 camera image of radiance ``rad`` (H, W, 3) under ``condition``."""
    h, w = rad.shape[:2]
    px = w / 320.0  # effects are designed at 320 pixels wide
    if condition == "night":
        img = rad * rng.uniform(0.03, 0.07)
        cam = scene.camera
        if len(light.lamps):
            u, v, z = cam.project(light.lamps)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            for ui, vi, zi, pos in zip(u, v, z, light.lamps):
                if zi <= 0.1 or not (-20 * px <= ui < w + 20 * px and -20 * px <= vi < h + 20 * px):
                    continue
                iy, ix = int(np.clip(vi, 0, h - 1)), int(np.clip(ui, 0, w - 1))
                if frame.dist[iy, ix] < np.linalg.norm(pos - cam.origin) - 0.5:
                    continue  # hidden
                r2 = ((xx - ui) ** 2 + (yy - vi) ** 2) / (px * px)
                glow = 4.0 * np.exp(-r2 / 3.0) + 0.25 * np.exp(-r2 / 150.0)
                img = img + glow[..., None] * np.array([1.0, 0.85, 0.6], np.float32)
        read, shot = rng.uniform(3.0, 6.0), 0.5
    elif condition == "glare":
        img = rad * rng.uniform(2.5, 4.5)
        sx, sy = rng.uniform(0.0, w), rng.uniform(-0.3 * h, 0.4 * h)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.sqrt((xx - sx) ** 2 + (yy - sy) ** 2) / w
        bloom = rng.uniform(1.0, 2.5) * np.exp(-r / rng.uniform(0.25, 0.5)) + rng.uniform(0.1, 0.3)
        img = img + bloom[..., None] * np.array([1.0, 0.97, 0.9], np.float32)
        read, shot = 1.0, 0.05
    else:
        img = rad * rng.uniform(0.8, 1.25)
        read, shot = 1.0, 0.05
    if condition == "motion_blur":
        length = max(3, int(round(rng.uniform(0.03, 0.08) * w)))
        img = ndimage.uniform_filter1d(img, length, axis=1, mode="nearest")
    v = np.clip(img, 0, 1) ** (1 / 2.2) * 255.0
    sigma = np.sqrt(read * read + shot * v)
    v = v + sigma * rng.standard_normal(v.shape, dtype=np.float32)
    return np.ascontiguousarray(np.clip(v + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------------- depth


def depth_image(frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """(1, H, W) uint16 depth in millimetres, 0 = invalid."""
    h, w = frame.depth.shape
    z = frame.depth
    sky = frame.sky
    zf = np.where(sky, 0, z)
    noisy = zf + (rng.uniform(0.002, 0.006) + rng.uniform(0.0008, 0.0025) * zf * zf) * rng.standard_normal(
        (h, w), dtype=np.float32
    )
    invalid = sky | (noisy > rng.uniform(30.0, 45.0))
    # grazing angles
    cos = np.abs(np.einsum("hwc,hwc->hw", frame.normal, frame.rays))
    invalid |= cos < 0.08
    # depth discontinuities lose half their pixels (flying-pixel filtering)
    edge = np.zeros((h, w), bool)
    dz = np.abs(np.diff(zf, axis=1)) > 0.05 * np.minimum(zf[:, 1:], zf[:, :-1]) + 0.05
    edge[:, 1:] |= dz
    edge[:, :-1] |= dz
    dz = np.abs(np.diff(zf, axis=0)) > 0.05 * np.minimum(zf[1:], zf[:-1]) + 0.05
    edge[1:] |= dz
    edge[:-1] |= dz
    invalid |= edge & (rng.random((h, w), dtype=np.float32) < 0.5)
    # blob-shaped holes anywhere, patchy holes on shiny / dark surfaces
    invalid |= _smooth_field(rng, h, w, 24 * w / 320) > rng.uniform(0.85, 0.95)
    dark = (frame.albedo @ _LUMA) < 0.01
    p_drop = np.clip(frame.gloss * 0.6 + dark * 0.5, 0, 0.9)
    invalid |= _smooth_field(rng, h, w, 4 * w / 320) < p_drop * 0.7
    # the range cut above keeps valid values under 45 m (45000 mm), well inside uint16: the clip never bites
    mm = np.where(invalid, 0, np.clip(np.round(noisy * 1000.0), 1, 65535))
    return mm.astype(np.uint16)[None]


# ---------------------------------------------------------------------------------------------------- thermal


def thermal_image(scene: Scene, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """(1, H, W) uint8 relative temperature."""
    h, w = frame.temp.shape
    lo = scene.ambient_temp - rng.uniform(8.0, 15.0)
    span = rng.uniform(35.0, 50.0)
    v = (frame.temp - lo) * (255.0 / span)
    v = ndimage.gaussian_filter(v, rng.uniform(0.6, 1.2) * w / 320, mode="nearest")
    v = v + rng.uniform(1.0, 2.5) * rng.standard_normal((h, w), dtype=np.float32)
    v = v + 0.8 * rng.standard_normal((1, w), dtype=np.float32)
    return np.clip(v + 0.5, 0, 255).astype(np.uint8)[None]


# ---------------------------------------------------------------------------------------------------- lidar


# the largest LiDAR range stored (mm); farther returns are dropped (0), so 65535 never occurs
LIDAR_MAX_MM = 65534


def lidar_image(scene: Scene, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """(1, H, W) uint16 LiDAR range in millimetres at the pixels its beams project to, 0 = no point.

    Returns farther than :data:`LIDAR_MAX_MM` (65.534 m, the 16-bit millimetre encoding's limit) are dropped.
    """
    cam = scene.camera
    h, w = frame.dist.shape
    n_beams = int(rng.integers(32, 65))
    elev = np.radians(np.linspace(-rng.uniform(15.0, 25.0), rng.uniform(2.0, 10.0), n_beams))
    elev = elev + np.radians(0.05) * rng.standard_normal(n_beams)
    half = np.arctan(w / 2 / cam.f) * 1.1
    az = np.arange(cam.yaw - half, cam.yaw + half, rng.uniform(2.0, 3.5) / cam.f) + rng.uniform(0, 0.002)
    ce, se = np.cos(elev)[:, None], np.sin(elev)[:, None]
    dirs = np.stack(np.broadcast_arrays(ce * np.sin(az), se, ce * np.cos(az)), axis=-1).reshape(-1, 3)
    right, up, fwd = cam.axes
    zc = dirs @ fwd
    ok = zc > 0.05
    dirs, zc = dirs[ok], zc[ok]
    u = cam.f * (dirs @ right) / zc + cam.cx
    v = -cam.f * (dirs @ up) / zc + cam.cy
    ix, iy = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    ix, iy = ix[inside], iy[inside]
    r = frame.dist[iy, ix].astype(np.float64)
    lum = frame.albedo[iy, ix] @ _LUMA
    p_ret = np.clip(0.35 + 4.0 * lum, 0, 1) * (1 - 0.4 * frame.gloss[iy, ix]) * (1 - rng.uniform(0.02, 0.08))
    keep = np.isfinite(r) & (r < rng.uniform(80.0, 120.0)) & (rng.random(len(r)) < p_ret)
    r = r[keep] + 0.02 * rng.standard_normal(int(keep.sum()))
    flat = iy[keep] * w + ix[keep]
    out = np.full(h * w, np.inf)
    np.minimum.at(out, flat, r)
    # the sensor reaches 80-120 m, but 16-bit millimetres hold at most 65.535 m: a return the encoding cannot hold
    # (one that would land on or beyond the top code 65535) is no return (0), never a clipped 65535
    mm = np.where(np.isfinite(out), np.maximum(np.round(out * 1000.0), 1), 0)
    mm = np.where(mm <= LIDAR_MAX_MM, mm, 0)
    return mm.astype(np.uint16).reshape(1, h, w)


# ---------------------------------------------------------------------------------------------------- events


def event_image(rad1: np.ndarray, rad2: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """(2, H, W) uint8 event counts (positive, negative) between radiances ``rad1`` and ``rad2`` (H, W, 3)."""
    h, w = rad1.shape[:2]
    y1, y2 = rad1 @ _LUMA, rad2 @ _LUMA
    night = condition == "night"
    eps = np.float32(2e-5 if night else 1e-3)  # dark-current floor, relative to the scene's light level
    sigma = np.float32(0.05 if night else 0.02)
    dl = np.log(y2 + eps) - np.log(y1 + eps)
    dl = dl + sigma * np.sqrt(np.float32(2.0)) * rng.standard_normal((h, w), dtype=np.float32)
    threshold = rng.uniform(0.15, 0.25) * (1 + 0.05 * rng.standard_normal((h, w), dtype=np.float32))
    counts = np.floor(np.abs(dl) / threshold)
    pos = np.where(dl > 0, counts, 0)
    neg = np.where(dl < 0, counts, 0)
    noise = rng.random((h, w), dtype=np.float32) < (0.004 if night else 0.001)
    polarity = rng.random((h, w), dtype=np.float32) < 0.5
    pos = pos + (noise & polarity)
    neg = neg + (noise & ~polarity)
    return np.clip(np.stack([pos, neg]), 0, 255).astype(np.uint8)
