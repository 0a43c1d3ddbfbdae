"""Vectorised ray casting of analytic primitives into per-pixel geometry and materials.

:func:`render` casts one ray per pixel through a pinhole :class:`~rgbx.data.synth.scene.Camera`. Each primitive
is only tested against the rays inside its projected bounding rectangle (most objects cover a few hundred
pixels), updating a z-buffer of ray distances and primitive ids. A second pass groups the pixels by primitive and
evaluates, per group, the surface normal, texture coordinates, albedo and temperature.

Street paintings are handled last: a ground pixel whose point ``P`` is hidden, *as seen from the painting camera*
(camera 1), behind one of a painting's phantom primitives takes that phantom's albedo and normal (its appearance)
while keeping the ground's geometry and temperature. Rendering the event camera's second pose with the same
painting camera makes the painting stick to the ground, as real paint does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rgbx.data.synth.classes import IGNORE_INDEX, PAINTING, SKY
from rgbx.data.synth.scene import BOX, CYLINDER, ELLIPSOID, PLANE, Camera, Primitive, Scene
from rgbx.data.synth.textures import ground_surface, surface

_EPS = 1e-4
GROUND_IGNORE_DISTANCE = 250.0  # ground further than this (a thin band at the horizon) is labelled ignore


@dataclass
class Frame:
    """Per-pixel render of one camera view (H, W = image size).

    Attributes:
        rays: (H, W, 3) unit ray directions.
        dist: (H, W) distance (m) from the camera centre along the ray; inf for sky.
        depth: (H, W) depth along the optical axis (m); inf for sky.
        origin: (3,) camera centre.
        prim: (H, W) int16 index into the rendered primitives; -1 for sky.
        normal: (H, W, 3) geometric unit normal (0 for sky); None when not asked (see :func:`render`).
        shade_normal: (H, W, 3) normal used for shading: the painting's where a painting covers the ground
            (None = same as ``normal``; use :attr:`shading_normal`).
        albedo: (H, W, 3) linear albedo (0 for sky).
        gloss: (H, W) 0-1 surface gloss (depth / LiDAR dropout tendency).
        label: (H, W) uint8 class index, ``IGNORE_INDEX`` for unlabelled pixels.
        temp: (H, W) surface temperature (°C; the sky's apparent temperature for sky), or None if not asked.
    """

    rays: np.ndarray
    origin: np.ndarray
    dist: np.ndarray
    depth: np.ndarray
    prim: np.ndarray
    normal: np.ndarray | None
    shade_normal: np.ndarray | None
    albedo: np.ndarray
    gloss: np.ndarray
    label: np.ndarray
    temp: np.ndarray | None

    @property
    def points(self) -> np.ndarray:
        """(H, W, 3) float32 world hit points (the camera centre for sky)."""
        d = np.where(np.isfinite(self.dist), self.dist, 0)[..., None]
        return self.origin.astype(np.float32) + d * self.rays

    @property
    def shading_normal(self) -> np.ndarray:
        """(H, W, 3) the normal to shade with."""
        return self.normal if self.shade_normal is None else self.shade_normal

    @property
    def sky(self) -> np.ndarray:
        """(H, W) bool, rays that hit nothing."""
        return self.prim < 0


# ------------------------------------------------------------------------------------------------ intersections


def _rotation(yaw: float) -> np.ndarray:
    """(3, 3) local → world rotation about the vertical axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float32)


def _local_rays(p: Primitive, o: np.ndarray, d: tuple) -> tuple[np.ndarray, tuple]:
    """Ray origin (3,) and direction components ``(dx, dy, dz)`` in the primitive's local frame."""
    o_l = (o - p.center).astype(np.float32)
    if p.yaw == 0.0:
        return o_l, d
    rot = _rotation(p.yaw)
    c, s = rot[0, 0], rot[0, 2]
    dx, dy, dz = d
    return o_l @ rot, (c * dx - s * dz, dy, s * dx + c * dz)


def intersect(p: Primitive, o: np.ndarray, d: tuple) -> np.ndarray:
    """Distances along rays ``o + t d`` to the first hit of ``p``; inf = miss.

    Args:
        p: the primitive. o: (3,) ray origin.
        d: unit direction components ``(dx, dy, dz)``, each an array of any shape S (e.g. (h, w) or (N,)).

    Returns:
        float32 array of shape S.
    """
    if p.kind == PLANE:
        dy = d[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.float32(-o[1]) / dy
        return np.where((dy < -1e-6) & (t > _EPS), t, np.float32(np.inf))
    o_l, d_l = _local_rays(p, o, d)
    if p.kind == BOX:
        tmin = tmax = None
        for a in range(3):
            da = d_l[a]
            safe = np.where(np.abs(da) < 1e-9, np.float32(1e-9), da)
            inv = np.float32(1.0) / safe
            h = np.float32(p.size[a])
            t0 = (-h - o_l[a]) * inv
            t1 = (h - o_l[a]) * inv
            near, far = np.minimum(t0, t1), np.maximum(t0, t1)
            tmin = near if tmin is None else np.maximum(tmin, near)
            tmax = far if tmax is None else np.minimum(tmax, far)
        return np.where((tmax >= tmin) & (tmin > _EPS), tmin, np.float32(np.inf))
    if p.kind == ELLIPSOID:
        inv_r = (1.0 / p.size).astype(np.float32)
        os_ = o_l * inv_r
        dx, dy, dz = (d_l[i] * inv_r[i] for i in range(3))
        a = dx * dx + dy * dy + dz * dz
        b = dx * os_[0] + dy * os_[1] + dz * os_[2]
        c = np.float32(os_ @ os_ - 1.0)
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))
    if p.kind == CYLINDER:
        r, height = np.float32(p.size[0]), np.float32(p.size[1])
        dx, dy, dz = d_l
        ox, oy, oz = o_l
        a = dx * dx + dz * dz
        b = dx * ox + dz * oz
        c = np.float32(ox * ox + oz * oz - r * r)
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            y = oy + t_side * dy
            best = np.where(
                (disc >= 0) & (t_side > _EPS) & (y >= 0) & (y <= height), t_side, np.float32(np.inf)
            )
            # a cap can only be seen from its outer side
            cap = height if oy > height else (np.float32(0.0) if oy < 0 else None)
            if cap is not None:
                t_cap = (cap - oy) / dy
                xc, zc = ox + t_cap * dx, oz + t_cap * dz
                ok = (t_cap > _EPS) & (xc * xc + zc * zc <= r * r) & (t_cap < best)
                best = np.where(ok, t_cap, best)
        return best
    raise ValueError(f"unknown primitive kind {p.kind}")


def geometry(p: Primitive, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals (n, 3), texture coordinates (n, 2) (metres) and local coordinates (n, 3) at surface points."""
    n = len(points)
    if p.kind == PLANE:
        normal = np.zeros((n, 3), np.float32)
        normal[:, 1] = 1.0
        return normal, points[:, [0, 2]], points
    rot = _rotation(p.yaw)
    local = (points - p.center.astype(np.float32)) @ rot
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    if p.kind == BOX:
        h = p.size.astype(np.float32)
        q = np.abs(local) / h
        axis = q.argmax(axis=1)
        n_l = np.zeros((n, 3), np.float32)
        n_l[np.arange(n), axis] = np.sign(local[np.arange(n), axis])
        # faces: x → (z, y), y → (x, z), z → (x, y); shifted so that v is the height above the box bottom
        u = np.where(axis == 0, z + h[2], x + h[0])
        v = np.where(axis == 1, z + h[2], y + h[1])
    elif p.kind == ELLIPSOID:
        r = p.size.astype(np.float32)
        n_l = local / (r * r)
        n_l /= np.linalg.norm(n_l, axis=1, keepdims=True) + 1e-12
        u = np.arctan2(x, z) * r[[0, 2]].mean()
        v = y + r[1]
    else:  # cylinder
        r, height = np.float32(p.size[0]), np.float32(p.size[1])
        rho = np.sqrt(x * x + z * z)
        d_side = np.abs(rho - r)
        top = np.abs(y - height) < d_side
        bottom = np.abs(y) < np.minimum(d_side, np.abs(y - height))
        n_l = np.stack([x / (rho + 1e-12), np.zeros_like(x), z / (rho + 1e-12)], axis=1)
        n_l[top] = (0.0, 1.0, 0.0)
        n_l[bottom] = (0.0, -1.0, 0.0)
        cap = top | bottom
        u = np.where(cap, x, np.arctan2(x, z) * r)
        v = np.where(cap, z, y)
    normal = n_l @ rot.T
    return normal.astype(np.float32), np.stack([u, v], axis=1).astype(np.float32), local


def _appearance(p: Primitive, scene: Scene, points: np.ndarray, with_temp: bool):
    """Normals (n, 3), albedo (n, 3), temperature (n,) or None, of primitive ``p`` at surface points (n, 3)."""
    normal, uv, local = geometry(p, points)
    if p.kind == PLANE:
        albedo, temp = ground_surface(scene.ground, scene.noise_flat, points)
    else:
        albedo, temp = surface(p.material, scene.noise_flat, uv)
        m = p.material
        if with_temp and m.hot_temp is not None and p.kind == BOX:
            hot = local[:, 0] > p.size[0] * (1.0 - 2.0 * m.hot_frac)
            temp = np.where(hot, np.float32(m.hot_temp), temp)
    return normal, albedo, (temp if with_temp else None)


# ------------------------------------------------------------------------------------------------ rendering


def render(scene: Scene, camera: Camera, prims: list[Primitive], with_temp: bool = True) -> Frame:
    """Render ``prims`` (with the scene's paintings) as seen by ``camera``; see :class:`Frame`.

    ``with_temp=False`` (the event camera's second render) skips the temperatures (``Frame.temp`` is None) and,
    where a painting makes them differ from the shading normals, the geometric normals (``Frame.normal`` is None).
    """
    h, w = camera.height, camera.width
    rays = camera.rays()
    soa = np.ascontiguousarray(rays.transpose(2, 0, 1))  # (3, H, W)
    o = camera.origin.astype(np.float32)
    dist = np.full((h, w), np.inf, np.float32)
    pid = np.full((h, w), -1, np.int16)

    # pass 1: z-buffer over each primitive's screen rectangle
    for k, p in enumerate(prims):
        if p.kind == PLANE:
            rect = (0, h, 0, w)
        else:
            rect = camera.rect(*p.bounds())
            if rect is None:
                continue
        y0, y1, x0, x1 = rect
        t = intersect(p, o, tuple(soa[:, y0:y1, x0:x1]))
        zb = dist[y0:y1, x0:x1]
        closer = t < zb
        if closer.any():
            zb[closer] = t[closer]
            pid[y0:y1, x0:x1][closer] = k

    # pass 2: per-primitive surface attributes, computed on pixels sorted by primitive (contiguous slices)
    n_pix = h * w
    flat_pid = pid.ravel()
    order = np.argsort(flat_pid, kind="stable")
    counts = np.bincount(flat_pid + 1, minlength=len(prims) + 1)
    ends = np.cumsum(counts)
    starts = ends - counts
    dist_s = dist.ravel()[order]
    rays_s = rays.reshape(-1, 3)[order]
    points_s = o + np.where(np.isfinite(dist_s), dist_s, 0)[:, None] * rays_s
    normal_s = np.zeros((n_pix, 3), np.float32)
    albedo_s = np.zeros((n_pix, 3), np.float32)
    temp_s = np.full(n_pix, scene.sky_temp, np.float32) if with_temp else None
    label = np.array([p.cls for p in prims] + [SKY], np.uint8)[flat_pid]  # index -1 → SKY
    gloss = np.array([p.material.gloss for p in prims] + [0.0], np.float32)[flat_pid]
    ground = None
    for k, p in enumerate(prims):
        if counts[k + 1] == 0:
            continue
        sl = slice(starts[k + 1], ends[k + 1])
        normal_s[sl], albedo_s[sl], tmp = _appearance(p, scene, points_s[sl], with_temp)
        if with_temp:
            temp_s[sl] = tmp
        if p.kind == PLANE:
            ground = sl

    shade_s = normal_s
    if ground is not None:
        far = dist_s[ground] > GROUND_IGNORE_DISTANCE
        label[order[ground][far]] = IGNORE_INDEX
        if scene.paintings:
            shade_s = normal_s.copy()
            near = np.flatnonzero(~far) + ground.start  # positions in the sorted arrays
            painted = _paint(scene, points_s, near, shade_s, albedo_s)
            label[order[painted]] = PAINTING

    inverse = np.empty(n_pix, np.int64)
    inverse[order] = np.arange(n_pix)

    def unsort(a):
        return a[inverse].reshape(h, w, *a.shape[1:])

    fwd = camera.axes[2].astype(np.float32)
    return Frame(
        rays=rays,
        origin=camera.origin,
        dist=dist,
        depth=dist * (rays @ fwd),
        prim=pid,
        normal=unsort(normal_s) if with_temp or shade_s is normal_s else None,
        shade_normal=unsort(shade_s) if shade_s is not normal_s else None,
        albedo=unsort(albedo_s),
        gloss=gloss.reshape(h, w),
        label=label.reshape(h, w),
        temp=unsort(temp_s) if with_temp else None,
    )


def _paint(
    scene: Scene, points: np.ndarray, ground: np.ndarray, shade_normal: np.ndarray, albedo: np.ndarray
) -> np.ndarray:
    """Apply the street paintings to ground pixels (in place).

    Args:
        points, shade_normal, albedo: (n, 3) per-pixel arrays; the last two are updated where painted.
        ground: (m,) positions in them of the ground pixels that may carry paint.

    Returns:
        The positions that were painted (k,) int64.
    """
    cam = scene.camera  # the viewpoint the paintings are designed for
    o = cam.origin.astype(np.float32)
    pts = points[ground]
    u, v, z = cam.project(pts)
    done = []
    for parts in scene.paintings:
        lo = np.min([p.bounds()[0] for p in parts], axis=0)
        hi = np.max([p.bounds()[1] for p in parts], axis=0)
        rect = cam.rect(lo, hi)
        if rect is None:
            continue
        y0, y1, x0, x1 = rect
        sel = np.flatnonzero((z > 0) & (u >= x0) & (u < x1) & (v >= y0) & (v < y1))
        if len(sel) == 0:
            continue
        rel = pts[sel] - o
        length = np.linalg.norm(rel, axis=1)
        dirs = rel / length[:, None]
        comps = tuple(np.ascontiguousarray(dirs.T))
        best = np.full(len(sel), np.inf, np.float32)
        which = np.full(len(sel), -1, np.int64)
        for j, p in enumerate(parts):
            t = intersect(p, o, comps)
            closer = t < best
            best[closer] = t[closer]
            which[closer] = j
        painted = best < length - 1e-3
        for j, p in enumerate(parts):
            m = painted & (which == j)
            if not m.any():
                continue
            at = o + best[m, None] * dirs[m]
            nrm, alb, _ = _appearance(p, scene, at, with_temp=False)
            pos = ground[sel[m]]
            shade_normal[pos] = nrm
            albedo[pos] = alb
            done.append(pos)
    return np.concatenate(done) if done else np.zeros(0, np.int64)
