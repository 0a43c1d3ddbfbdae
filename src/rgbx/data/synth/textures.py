"""Procedural textures: value noise, stripes, checkers, window grids and the ground layout.

Every function is vectorised over ``n`` surface points given by texture coordinates ``uv`` (n, 2) in metres
(or world points for the ground). A pattern returns ``s`` (n,) in [0, 1], the weight of the material's second
colour; the same weight drives the temperature pattern (``Material.temp_var``), so e.g. window glass is both
darker and colder than the wall around it.
"""

from __future__ import annotations

import numpy as np

from rgbx.data.synth.scene import CHECKER, NOISE, NOISE_TABLE_SIZE, STRIPES, WINDOWS, Ground, Material

_MASK = NOISE_TABLE_SIZE - 1
_STRIDE = NOISE_TABLE_SIZE + 1


def value_noise(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smoothly interpolated lattice noise in [0, 1] at ``u``, ``v`` (n,) in lattice cells (wrapping).

    ``table`` is the flattened, wrap-padded noise table (``Scene.noise_flat``, (65 * 65,)).
    """
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    tu = tu * tu * (3 - 2 * tu)
    tv = tv * tv * (3 - 2 * tv)
    i = (fu.astype(np.int32) & _MASK) + (fv.astype(np.int32) & _MASK) * _STRIDE
    t00, t01 = table[i], table[i + 1]
    t10, t11 = table[i + _STRIDE], table[i + _STRIDE + 1]
    a = t00 + (t01 - t00) * tu
    b = t10 + (t11 - t10) * tu
    return a + (b - a) * tv


def fbm(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Two octaves of value noise, in [0, 1]."""
    return 0.65 * value_noise(table, u, v) + 0.35 * value_noise(table, 2.03 * u + 17.3, 2.03 * v + 31.7)


def pattern(mat: Material, table: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Weight (n,) float32 of ``mat.color1`` at texture coordinates ``uv`` (n, 2)."""
    u = uv[:, 0] / mat.scale + mat.offset[0]
    v = uv[:, 1] / mat.scale + mat.offset[1]
    if mat.pattern == NOISE:
        return np.clip((fbm(table, u, v) - 0.5) * 2.2 + 0.5, 0, 1).astype(np.float32)
    if mat.pattern == STRIPES:
        return (u - np.floor(u) < 0.4).astype(np.float32)
    if mat.pattern == CHECKER:
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if mat.pattern == WINDOWS:
        # u runs along the facade, v is the height above the ground (uv in metres, scale = floor height)
        fu, fv = u - np.floor(u), v - np.floor(v)
        return ((np.abs(fu - 0.5) < 0.27) & (np.abs(fv - 0.55) < 0.25) & (uv[:, 1] > 1.5)).astype(np.float32)
    return np.zeros(len(uv), np.float32)


def grain(table: np.ndarray, uv: np.ndarray, strength: float = 0.12) -> np.ndarray:
    """Fine multiplicative albedo variation (n,) around 1, so that no surface is perfectly flat-coloured."""
    return 1.0 + strength * (value_noise(table, uv[:, 0] * 7.1 + 5.0, uv[:, 1] * 7.1 + 9.0) - 0.5) * 2.0


def surface(mat: Material, table: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (n, 3) float32 and temperature (n,) float32 at texture coordinates ``uv`` (n, 2)."""
    s = pattern(mat, table, uv)
    c0 = np.asarray(mat.color0, np.float32)
    c1 = np.asarray(mat.color1, np.float32)
    albedo = c0 + (c1 - c0) * s[:, None]
    if mat.pattern != NOISE:
        albedo *= grain(table, uv)[:, None]
    temp = (mat.temp + mat.temp_var * s).astype(np.float32)
    return albedo.astype(np.float32), temp


def ground_surface(ground: Ground, table: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (n, 3) and temperature (n,) of ground points (n, 3): asphalt road, lane dashes, tiled sidewalks."""
    x, z = points[:, 0], points[:, 2]
    uv = np.stack([x, z], axis=1)
    dx = np.abs(x - ground.road_x)
    on_road = dx < ground.road_half_width
    albedo = np.empty((len(points), 3), np.float32)
    temp = np.empty(len(points), np.float32)
    for mat, where in ((ground.asphalt, on_road), (ground.sidewalk, ~on_road)):
        if where.any():
            albedo[where], temp[where] = surface(mat, table, uv[where])
    # curb line and dashed centre line
    paint = np.abs(dx - ground.road_half_width) < 0.1
    if ground.lane_dashes:
        paint |= (dx < 0.08) & ((z / 6.0 - np.floor(z / 6.0)) < 0.5)
    if paint.any():
        albedo[paint] = np.asarray(ground.paint_color, np.float32) * grain(table, uv[paint])[:, None]
        temp[paint] = ground.paint_temp
    return albedo, temp
