"""Random scene descriptions: camera, primitives, materials, temperatures, lights.

A :class:`Scene` is pure data drawn from one random generator; rendering (``render.py``) and the sensor models
(``sensors.py``) turn it into images. World frame: metres, ``x`` right, ``y`` up, ``z`` forward, ground plane
``y = 0``; the camera stands at ``(0, h, 0)``.

A street: a road along ``z`` with sidewalks, rows of buildings (or trees) on either side, sometimes a building
across the end of the street, trees, bushes, poles (some with lamps), and the foreground objects of the
confusable classes (persons, mannequins, cars, crates, paintings) placed inside the camera's field of view.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from rgbx.data.synth.classes import BUILDING, CAR, CRATE, GROUND, MANNEQUIN, PERSON, POLE, VEGETATION

# texture patterns
FLAT, NOISE, STRIPES, CHECKER, WINDOWS = range(5)

# primitive kinds
PLANE, BOX, ELLIPSOID, CYLINDER = range(4)

NOISE_TABLE_SIZE = 64


@dataclass
class Material:
    """Surface appearance and temperature.

    Attributes:
        color0, color1: (3,) linear albedos in [0, 1]; the pattern mixes them.
        pattern: FLAT / NOISE / STRIPES / CHECKER / WINDOWS.
        scale: metres per pattern period.
        offset: (2,) offset into the scene's noise table, so materials sharing a table look different.
        temp: surface temperature (°C) where the pattern shows ``color0``.
        temp_var: temperature of ``color1`` parts minus ``temp`` (°C), e.g. cold window glass.
        hot_temp: temperature (°C) of the front end (local +x) of a box, e.g. a car's engine; None = none.
        hot_frac: fraction of the box length that is hot.
        gloss: 0-1; shiny or dark surfaces lose depth / LiDAR returns more often.
    """

    color0: np.ndarray
    color1: np.ndarray
    pattern: int = FLAT
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    temp: float = 15.0
    temp_var: float = 0.0
    hot_temp: float | None = None
    hot_frac: float = 0.0
    gloss: float = 0.0


@dataclass
class Primitive:
    """One analytic solid.

    Attributes:
        kind: PLANE (the ground, ``y = 0``), BOX, ELLIPSOID or CYLINDER (vertical axis).
        center: (3,) box / ellipsoid centre; cylinder: centre of the base disc.
        size: (3,) box half extents (local x, y, z); ellipsoid radii; cylinder (radius, height, radius).
        yaw: rotation about the vertical axis (radians); local = Rᵀ (world - center).
        cls: class index.
        obj: object id (the parts of one object share it).
        material: its :class:`Material`.
        velocity: (3,) displacement (metres) between the two event-camera renders.
    """

    kind: int
    center: np.ndarray
    size: np.ndarray
    yaw: float
    cls: int
    obj: int
    material: Material
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space axis-aligned bounding box ``(lo, hi)``, each (3,)."""
        if self.kind == CYLINDER:
            r, h = self.size[0], self.size[1]
            lo = self.center + np.array([-r, 0.0, -r])
            hi = self.center + np.array([r, h, r])
            return lo, hi
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        hx = c * self.size[0] + s * self.size[2]
        hz = s * self.size[0] + c * self.size[2]
        ext = np.array([hx, self.size[1], hz])
        return self.center - ext, self.center + ext

    def moved(self) -> Primitive:
        """The primitive displaced by its velocity (its pose in the second event render)."""
        if not np.any(self.velocity):
            return self
        return replace(self, center=self.center + self.velocity)


@dataclass
class Camera:
    """Pinhole camera.

    Attributes:
        origin: (3,) position (metres).
        yaw, pitch, roll: orientation (radians); yaw about the vertical, positive pitch looks up.
        f: focal length in pixels; cx, cy: principal point (pixels); height, width: image size.
    """

    origin: np.ndarray
    yaw: float
    pitch: float
    roll: float
    f: float
    cx: float
    cy: float
    height: int
    width: int

    @cached_property
    def axes(self) -> np.ndarray:
        """(3, 3) rows: right, up, forward unit vectors in world coordinates."""
        cy_, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        fwd = np.array([cp * sy, sp, cp * cy_])
        right0 = np.array([cy_, 0.0, -sy])
        up0 = np.cross(fwd, right0)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        right = cr * right0 + sr * up0
        up = -sr * right0 + cr * up0
        return np.stack([right, up, fwd])

    def rays(self) -> np.ndarray:
        """(H, W, 3) float32 unit ray directions through the pixel centres."""
        right, up, fwd = self.axes.astype(np.float32)
        xs = ((np.arange(self.width, dtype=np.float32) + 0.5 - self.cx) / self.f)[None, :]
        ys = ((np.arange(self.height, dtype=np.float32) + 0.5 - self.cy) / self.f)[:, None]
        inv_norm = 1.0 / np.sqrt(xs * xs + ys * ys + 1.0)
        d = np.empty((self.height, self.width, 3), np.float32)
        for c in range(3):
            d[..., c] = (right[c] * xs - up[c] * ys + fwd[c]) * inv_norm
        return d

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points (N, 3) → pixel coordinates ``u`` (N,), ``v`` (N,) and camera depth ``z`` (N,)."""
        right, up, fwd = self.axes
        rel = np.asarray(points, dtype=np.float64) - self.origin
        z = rel @ fwd
        zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
        return self.f * (rel @ right) / zs + self.cx, -self.f * (rel @ up) / zs + self.cy, z

    def rect(self, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel rectangle ``(y0, y1, x0, x1)`` covering a world box, or None when it cannot be seen."""
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        u, v, z = self.project(corners)
        if z.max() <= 0.05:
            return None
        if z.min() <= 0.05:
            return 0, self.height, 0, self.width
        x0 = max(int(math.floor(u.min())) - 1, 0)
        x1 = min(int(math.ceil(u.max())) + 2, self.width)
        y0 = max(int(math.floor(v.min())) - 1, 0)
        y1 = min(int(math.ceil(v.max())) + 2, self.height)
        if x0 >= x1 or y0 >= y1:
            return None
        return y0, y1, x0, x1

    def moved(self, translation: np.ndarray, dyaw: float, dpitch: float, droll: float) -> Camera:
        return replace(
            self,
            origin=self.origin + translation,
            yaw=self.yaw + dyaw,
            pitch=self.pitch + dpitch,
            roll=self.roll + droll,
        )


@dataclass
class Ground:
    """The ground plane's layout: a road along z with lane dashes, sidewalks either side."""

    road_x: float
    road_half_width: float
    lane_dashes: bool
    asphalt: Material
    sidewalk: Material
    paint_color: np.ndarray
    paint_temp: float


@dataclass
class Scene:
    """Everything needed to render one sample.

    Attributes:
        camera: the frame the labels belong to; camera2: the event camera's second pose.
        prims: real primitives (index 0 is the ground plane).
        paintings: groups of *phantom* primitives, each group one anamorphic street painting: not solid, they
            only paint the ground with what camera 1 would see of them.
        ground: ground layout. noise: (64, 64) float32 value-noise table in [0, 1].
        ambient_temp: air temperature (°C); sky_temp: apparent sky temperature (°C).
        sun_dir: (3,) unit vector towards the sun. lamps: (K, 3) street lamp positions; lamp_power: (K,).
    """

    camera: Camera
    camera2: Camera
    prims: list[Primitive]
    paintings: list[list[Primitive]]
    ground: Ground
    noise: np.ndarray
    ambient_temp: float
    sky_temp: float
    sun_dir: np.ndarray
    lamps: np.ndarray
    lamp_power: np.ndarray

    @cached_property
    def noise_flat(self) -> np.ndarray:
        """The noise table padded by one wrapped row / column and flattened ((65 * 65,) float32)."""
        return np.pad(self.noise, ((0, 1), (0, 1)), mode="wrap").ravel()


# ----------------------------------------------------------------------------------------------- colour sampling


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.asarray(c, dtype=np.float64) ** 2.2


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return _srgb_to_linear(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _paint_material(rng: np.random.Generator, temp: float) -> Material:
    """Shared by cars, crates and paintings of crates: any hue, plain or patterned."""
    c0 = _hsv(rng.random(), rng.uniform(0.05, 0.9), rng.uniform(0.2, 0.95))
    pattern = int(rng.choice([FLAT, NOISE, STRIPES, CHECKER], p=[0.35, 0.25, 0.2, 0.2]))
    c1 = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.1, 0.95)) if pattern != NOISE else c0 * 0.5
    return Material(
        c0,
        c1,
        pattern,
        rng.uniform(0.15, 0.8),
        tuple(rng.uniform(0, 64, 2)),
        temp,
        0.0,
        gloss=rng.uniform(0, 0.6),
    )


def _cloth_material(rng: np.random.Generator, temp: float) -> Material:
    """Shared by persons, mannequins and paintings of figures."""
    c0 = _hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.1, 0.85))
    pattern = int(rng.choice([FLAT, NOISE, STRIPES, CHECKER], p=[0.5, 0.2, 0.2, 0.1]))
    c1 = _hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.1, 0.85)) if pattern != NOISE else c0 * 0.6
    return Material(c0, c1, pattern, rng.uniform(0.08, 0.3), tuple(rng.uniform(0, 64, 2)), temp, 0.0)


def _skin_material(rng: np.random.Generator, temp: float) -> Material:
    c0 = _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.95))
    return Material(c0, c0 * 0.4, NOISE, 0.05, tuple(rng.uniform(0, 64, 2)), temp, 0.0)


# ----------------------------------------------------------------------------------------------- object builders


class _Builder:
    """Collects primitives and keeps foreground objects from overlapping."""

    def __init__(
        self,
        rng: np.random.Generator,
        camera: Camera,
        hfov: float,
        ambient: float,
        corridor: tuple[float, float],
    ):
        self.rng = rng
        self.camera = camera
        self.hfov = hfov
        self.ambient = ambient
        self.corridor = corridor  # x range objects may stand in (between the building fronts)
        self.prims: list[Primitive] = []
        self.footprints: list[tuple[float, float, float]] = [(0.0, 0.0, 1.5)]  # the camera itself
        self.next_obj = 1

    def free(self, x: float, z: float, r: float) -> bool:
        return all((x - fx) ** 2 + (z - fz) ** 2 > (r + fr) ** 2 for fx, fz, fr in self.footprints)

    def spot_in_view(
        self,
        r: float,
        dmin: float,
        dmax: float,
        spread: float = 0.45,
        corridor: tuple[float, float] | None = None,
    ) -> tuple[float, float] | None:
        """A free ground position inside the horizontal field of view and the street corridor, or None."""
        lo, hi = corridor or self.corridor
        for _ in range(12):
            dist = self.rng.uniform(dmin, dmax)
            bearing = self.camera.yaw + self.rng.uniform(-spread, spread) * self.hfov
            x, z = dist * math.sin(bearing), dist * math.cos(bearing)
            if lo + r < x < hi - r and self.free(x, z, r):
                return x, z
        return None

    def add(self, prims: list[Primitive], x: float, z: float, r: float) -> None:
        self.footprints.append((x, z, r))
        self.prims.extend(prims)
        self.next_obj += 1


def _figure(rng, x, z, scale, cls, obj, cloth_temp, skin_temp) -> list[Primitive]:
    """A standing figure (legs, torso, head); persons, mannequins and figure paintings all come from here."""
    leg_h = rng.uniform(0.72, 0.95) * scale
    leg_r = rng.uniform(0.13, 0.2) * scale
    torso_h = rng.uniform(0.5, 0.65) * scale
    torso_r = max(leg_r, rng.uniform(0.16, 0.24) * scale)
    head_r = rng.uniform(0.09, 0.12) * scale
    pants = _cloth_material(rng, cloth_temp)
    shirt = _cloth_material(rng, cloth_temp + 0.5)
    skin = _skin_material(rng, skin_temp)
    return [
        Primitive(CYLINDER, np.array([x, 0.0, z]), np.array([leg_r, leg_h, leg_r]), 0.0, cls, obj, pants),
        Primitive(
            CYLINDER, np.array([x, leg_h, z]), np.array([torso_r, torso_h, torso_r]), 0.0, cls, obj, shirt
        ),
        Primitive(
            ELLIPSOID,
            np.array([x, leg_h + torso_h + head_r * 0.9, z]),
            np.array([head_r, head_r * 1.2, head_r]),
            0.0,
            cls,
            obj,
            skin,
        ),
    ]


def _vehicle_shape(rng) -> tuple[np.ndarray, np.ndarray, float]:
    """Body half extents (3,), cabin half extents (3,) and cabin offset along local x: cars and crate stacks."""
    body = np.array([rng.uniform(1.7, 2.4), rng.uniform(0.33, 0.5), rng.uniform(0.78, 1.0)])
    cabin = np.array(
        [body[0] * rng.uniform(0.45, 0.6), rng.uniform(0.22, 0.33), body[2] * rng.uniform(0.82, 0.95)]
    )
    shift = -body[0] * rng.uniform(0.0, 0.2)
    return body, cabin, shift


def _stack(x, z, yaw, body, cabin, shift, cls, obj, mat_body, mat_cabin) -> list[Primitive]:
    c, s = math.cos(yaw), math.sin(yaw)
    cabin_center = np.array([x + c * shift, 2 * body[1] + cabin[1], z - s * shift])
    return [
        Primitive(BOX, np.array([x, body[1], z]), body, yaw, cls, obj, mat_body),
        Primitive(BOX, cabin_center, cabin, yaw, cls, obj, mat_cabin),
    ]


def _crate_shape(rng, max_height: float | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    if rng.random() < 0.5:
        body, cabin, shift = _vehicle_shape(rng)
    else:
        body = np.array([rng.uniform(0.25, 1.4), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.2)])
        cabin, shift = None, 0.0
    if max_height is not None:
        height = 2 * body[1] + (2 * cabin[1] if cabin is not None else 0.0)
        if height > max_height:
            k = max_height / height
            body = body * k
            cabin = cabin * k if cabin is not None else None
            shift *= k
    return body, cabin, shift


def _tree(b: _Builder, x: float, z: float) -> None:
    rng = b.rng
    trunk_r, trunk_h = rng.uniform(0.1, 0.28), rng.uniform(1.4, 3.5)
    crown = np.array([rng.uniform(1.0, 2.6), rng.uniform(1.2, 3.0), 0.0])
    crown[2] = crown[0] * rng.uniform(0.8, 1.2)
    if not b.free(x, z, crown.max()):
        return
    ta = b.ambient
    bark = Material(
        _hsv(rng.uniform(0.05, 0.1), 0.5, rng.uniform(0.2, 0.4)),
        _hsv(0.07, 0.5, 0.12),
        STRIPES,
        rng.uniform(0.05, 0.12),
        tuple(rng.uniform(0, 64, 2)),
        ta + rng.uniform(-1, 1),
        -0.5,
    )
    leaves = Material(
        _hsv(rng.uniform(0.17, 0.35), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.6)),
        _hsv(rng.uniform(0.17, 0.35), rng.uniform(0.5, 0.9), rng.uniform(0.08, 0.25)),
        NOISE,
        rng.uniform(0.15, 0.4),
        tuple(rng.uniform(0, 64, 2)),
        ta + rng.uniform(-4, -1),
        rng.uniform(-2.5, -0.5),
        gloss=0.3,
    )
    obj = b.next_obj
    b.add(
        [
            Primitive(
                CYLINDER,
                np.array([x, 0.0, z]),
                np.array([trunk_r, trunk_h, trunk_r]),
                0.0,
                VEGETATION,
                obj,
                bark,
            ),
            Primitive(
                ELLIPSOID,
                np.array([x, trunk_h + crown[1] * 0.75, z]),
                crown,
                rng.uniform(0, math.pi),
                VEGETATION,
                obj,
                leaves,
            ),
        ],
        x,
        z,
        float(max(crown[0], crown[2])) * 0.8,  # nothing stands under the crown
    )


def _bush(b: _Builder, x: float, z: float) -> None:
    rng = b.rng
    radii = np.array([rng.uniform(0.4, 1.3), rng.uniform(0.3, 0.9), rng.uniform(0.4, 1.3)])
    if not b.free(x, z, radii.max()):
        return
    leaves = Material(
        _hsv(rng.uniform(0.15, 0.38), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.55)),
        _hsv(rng.uniform(0.15, 0.38), rng.uniform(0.5, 0.9), rng.uniform(0.06, 0.2)),
        NOISE,
        rng.uniform(0.1, 0.3),
        tuple(rng.uniform(0, 64, 2)),
        b.ambient + rng.uniform(-4, 0),
        rng.uniform(-2, 0),
        gloss=0.3,
    )
    b.add(
        [
            Primitive(
                ELLIPSOID,
                np.array([x, radii[1] * 0.7, z]),
                radii,
                rng.uniform(0, math.pi),
                VEGETATION,
                b.next_obj,
                leaves,
            )
        ],
        x,
        z,
        radii.max(),
    )


def _building_material(rng, ta: float) -> Material:
    wall = _hsv(rng.uniform(0.0, 0.15), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.9))
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.35))
    pattern = WINDOWS if rng.random() < 0.8 else NOISE
    return Material(
        wall,
        glass if pattern == WINDOWS else wall * 0.7,
        pattern,
        rng.uniform(2.5, 4.0),
        tuple(rng.uniform(0, 64, 2)),
        ta + rng.uniform(-1, 6),
        rng.uniform(-6, -2),
        gloss=0.1,
    )


# ----------------------------------------------------------------------------------------------- the scene


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Draw a random street scene for an image of ``height`` × ``width`` pixels."""
    # camera
    cam_h = rng.uniform(1.2, 2.4)
    hfov = math.radians(rng.uniform(62, 85))
    f = width / 2 / math.tan(hfov / 2)
    camera = Camera(
        np.array([0.0, cam_h, 0.0]),
        rng.uniform(-0.3, 0.3),
        -rng.uniform(0.0, 0.16),
        rng.normal(0, 0.02),
        f,
        width / 2,
        height / 2,
        height,
        width,
    )
    ta = rng.uniform(0.0, 28.0)

    # ground
    road_hw = rng.uniform(3.0, 7.0)
    road_x = rng.uniform(-1, 1) * (road_hw - 1.5)
    side_w = rng.uniform(2.0, 5.0)
    tar = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.1), rng.uniform(0.2, 0.45))
    asphalt = Material(
        tar,
        tar * rng.uniform(0.55, 0.85),
        NOISE,
        rng.uniform(0.3, 1.2),
        tuple(rng.uniform(0, 64, 2)),
        ta + rng.uniform(0, 12),
        rng.uniform(-1.5, 0.0),
    )
    sidewalk = Material(
        _hsv(rng.uniform(0, 0.12), rng.uniform(0, 0.25), rng.uniform(0.35, 0.75)),
        _hsv(rng.uniform(0, 0.12), rng.uniform(0, 0.25), rng.uniform(0.25, 0.6)),
        CHECKER,
        rng.uniform(0.4, 1.0),
        tuple(rng.uniform(0, 64, 2)),
        ta + rng.uniform(-1, 6),
        -0.3,
    )
    ground = Ground(
        road_x,
        road_hw,
        bool(rng.random() < 0.7),
        asphalt,
        sidewalk,
        _hsv(rng.choice([0.14, 0.0]), rng.choice([0.0, 0.7]), 0.85),
        ta + rng.uniform(-2, 0.5),
    )
    plane = Primitive(PLANE, np.zeros(3), np.zeros(3), 0.0, GROUND, 0, asphalt)

    curb = road_hw + side_w  # distance of the building fronts from the road centre
    b = _Builder(rng, camera, hfov, ta, (road_x - curb, road_x + curb))
    b.prims.append(plane)
    # the sidewalks are kept free: nothing may stand on the road/sidewalk except foreground objects
    for side in (-1.0, 1.0):
        x_front = road_x + side * (curb + rng.uniform(0.0, 2.0))
        if rng.random() < 0.8:
            zc = rng.uniform(-15.0, 2.0)
            zmax = rng.uniform(50.0, 130.0)
            while zc < zmax:
                length = rng.uniform(6.0, 25.0)
                depth = rng.uniform(6.0, 15.0)
                bh = rng.uniform(4.0, 30.0)
                setback = rng.uniform(0.0, 1.5) if rng.random() < 0.5 else 0.0
                cx = x_front + side * (setback + depth / 2)
                b.prims.append(
                    Primitive(
                        BOX,
                        np.array([cx, bh / 2, zc + length / 2]),
                        np.array([depth / 2, bh / 2, length / 2]),
                        0.0,
                        BUILDING,
                        b.next_obj,
                        _building_material(rng, ta),
                    )
                )
                b.next_obj += 1
                zc += length + (rng.uniform(1.0, 8.0) if rng.random() < 0.4 else 0.0)
        else:
            for _ in range(int(rng.integers(4, 10))):
                x = x_front + side * rng.uniform(0.5, 8.0)
                z = rng.uniform(2.0, 70.0)
                (_tree if rng.random() < 0.6 else _bush)(b, x, z)
    if rng.random() < 0.45:
        zb = rng.uniform(35.0, 100.0)
        bh = rng.uniform(6.0, 35.0)
        b.prims.append(
            Primitive(
                BOX,
                np.array([road_x + rng.uniform(-10, 10), bh / 2, zb + 5.0]),
                np.array([rng.uniform(15.0, 60.0), bh / 2, 5.0]),
                rng.normal(0, 0.1),
                BUILDING,
                b.next_obj,
                _building_material(rng, ta),
            )
        )
        b.next_obj += 1

    # anamorphic street paintings of crates or figures as seen from camera 1, placed before the other foreground
    # objects so that the ground they are painted on (up to where camera-1 rays through their top meet the
    # ground) stays free; they are kept low enough for that stretch to end within 32 m
    paintings = []
    for _ in range(int(rng.choice([0, 0, 1, 1, 1, 2]))):
        dist = rng.uniform(4.0, 14.0)
        max_h = cam_h * min(0.85, 1.0 - dist / 32.0)
        if rng.random() < 0.6:
            body, cabin, shift = _crate_shape(rng, max_h)
            r = float(np.hypot(body[0], body[2]))
            spot = b.spot_in_view(r, dist, dist, spread=0.3)
            if spot is None:
                continue
            x, z = spot
            yaw = rng.uniform(0, math.pi)
            paint = _paint_material(rng, ta)
            parts = (
                [Primitive(BOX, np.array([x, body[1], z]), body, yaw, 0, 0, paint)]
                if cabin is None
                else _stack(x, z, yaw, body, cabin, shift, 0, 0, paint, paint)
            )
            top = 2 * body[1] + (2 * cabin[1] if cabin is not None else 0.0)
        else:
            r = 0.45
            spot = b.spot_in_view(r, dist, dist, spread=0.3)
            if spot is None:
                continue
            x, z = spot
            parts = _figure(rng, x, z, min(rng.uniform(0.65, 1.12), max_h / 1.9), 0, 0, ta, ta)
            top = float(parts[-1].center[1] + parts[-1].size[1])
        far = dist * cam_h / (cam_h - top)
        s_ = dist - r
        while s_ < far + r:
            k = s_ / dist
            b.footprints.append((x * k, z * k, r * k))
            s_ += max(r * k, 0.5)
        paintings.append(parts)

    # trees and bushes along the sidewalks
    for _ in range(int(rng.integers(0, 7))):
        side = rng.choice([-1.0, 1.0])
        x = road_x + side * (road_hw + rng.uniform(0.5, side_w))
        (_tree if rng.random() < 0.6 else _bush)(b, x, rng.uniform(3.0, 60.0))

    # poles, some with a lamp
    lamps = []
    for _ in range(int(rng.integers(1, 7))):
        side = rng.choice([-1.0, 1.0])
        x = road_x + side * (road_hw + rng.uniform(0.2, 0.8))
        z = rng.uniform(3.0, 50.0)
        r = rng.uniform(0.035, 0.12)
        if not b.free(x, z, r + 0.3):
            continue
        h = rng.uniform(3.0, 9.0)
        metal = Material(
            _hsv(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.2, 0.75)),
            _hsv(0, 0, 0.3),
            NOISE if rng.random() < 0.5 else FLAT,
            0.3,
            tuple(rng.uniform(0, 64, 2)),
            ta + rng.uniform(-5, 1),
            0.0,
            gloss=rng.uniform(0.2, 0.7),
        )
        b.add(
            [Primitive(CYLINDER, np.array([x, 0.0, z]), np.array([r, h, r]), 0.0, POLE, b.next_obj, metal)],
            x,
            z,
            r + 0.3,
        )
        if h > 4.0 and rng.random() < 0.6:
            lamps.append([x - side * 0.6, h - 0.1, z])

    # persons and mannequins: identical geometry / colour distributions, different temperature and motion
    for cls in (PERSON, MANNEQUIN):
        for _ in range(int(rng.integers(0, 6))):
            spot = b.spot_in_view(0.45, 3.0, 30.0)
            if spot is None:
                continue
            x, z = spot
            scale = rng.uniform(0.65, 1.12)
            if cls == PERSON:
                cloth = ta + (34.0 - ta) * rng.uniform(0.35, 0.75)
                skin = rng.uniform(31.5, 35.5)
            else:
                cloth = ta + rng.uniform(-1.5, 2.5)
                skin = cloth + rng.uniform(-0.5, 0.5)
            parts = _figure(rng, x, z, scale, cls, b.next_obj, cloth, skin)
            if cls == PERSON and rng.random() < 0.6:
                heading = rng.uniform(0, 2 * math.pi)
                step = rng.uniform(0.05, 0.15)
                for p in parts:
                    p.velocity = np.array([math.cos(heading) * step, 0.0, math.sin(heading) * step])
            b.add(parts, x, z, 0.45 * scale)

    # cars: warm engine and cabin; crates: same paint and (half of them) same shape distribution, cold
    for _ in range(int(rng.integers(0, 5))):
        body, cabin, shift = _vehicle_shape(rng)
        spot = b.spot_in_view(body[0] + 0.2, 5.0, 45.0, corridor=(road_x - road_hw, road_x + road_hw))
        if spot is None:
            continue
        x, z = spot
        # the body's local +x (its hot front end) points along or against the road
        yaw = math.pi / 2 + (math.pi if rng.random() < 0.5 else 0.0) + rng.normal(0, 0.12)
        paint = _paint_material(rng, ta + rng.uniform(1.0, 6.0))
        paint.hot_temp = ta + rng.uniform(15.0, 40.0)
        paint.hot_frac = rng.uniform(0.25, 0.4)
        cabin_mat = replace(paint, temp=ta + rng.uniform(3.0, 10.0), hot_temp=None)
        parts = _stack(x, z, yaw, body, cabin, shift, CAR, b.next_obj, paint, cabin_mat)
        if rng.random() < 0.5:
            step = rng.uniform(0.2, 1.2)
            v = np.array([math.cos(yaw) * step, 0.0, -math.sin(yaw) * step])
            for p in parts:
                p.velocity = v
        b.add(parts, x, z, body[0] + 0.2)
    for _ in range(int(rng.integers(0, 6))):
        body, cabin, shift = _crate_shape(rng)
        spot = b.spot_in_view(body[[0, 2]].max() + 0.2, 3.5, 40.0)
        if spot is None:
            continue
        x, z = spot
        yaw = rng.uniform(0, math.pi)
        paint = _paint_material(rng, ta + rng.uniform(-2.0, 3.0))
        if cabin is None:
            parts = [Primitive(BOX, np.array([x, body[1], z]), body, yaw, CRATE, b.next_obj, paint)]
        else:
            parts = _stack(
                x,
                z,
                yaw,
                body,
                cabin,
                shift,
                CRATE,
                b.next_obj,
                paint,
                replace(paint, temp=paint.temp + rng.uniform(-0.5, 0.5)),
            )
        b.add(parts, x, z, body[[0, 2]].max() + 0.2)

    # the event camera's second pose: small forward / sideways motion and rotation
    fwd = np.array([math.sin(camera.yaw), 0.0, math.cos(camera.yaw)])
    side = np.array([math.cos(camera.yaw), 0.0, -math.sin(camera.yaw)])
    translation = (
        fwd * rng.uniform(0.03, 0.25) + side * rng.normal(0, 0.05) + np.array([0, rng.normal(0, 0.02), 0])
    )
    camera2 = camera.moved(translation, rng.normal(0, 0.012), rng.normal(0, 0.006), rng.normal(0, 0.003))

    lamps_arr = np.array(lamps[:3], dtype=np.float64).reshape(-1, 3)
    return Scene(
        camera=camera,
        camera2=camera2,
        prims=b.prims,
        paintings=paintings,
        ground=ground,
        noise=rng.random((NOISE_TABLE_SIZE, NOISE_TABLE_SIZE), dtype=np.float32),
        ambient_temp=ta,
        sky_temp=ta - rng.uniform(20.0, 40.0),
        sun_dir=_unit(rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(15, 65))),
        lamps=lamps_arr,
        lamp_power=rng.uniform(10.0, 30.0, len(lamps_arr)),
    )


def _unit(azimuth: float, elevation: float) -> np.ndarray:
    ce = math.cos(elevation)
    return np.array([ce * math.sin(azimuth), math.sin(elevation), ce * math.cos(azimuth)])
