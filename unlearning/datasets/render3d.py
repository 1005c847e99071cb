"""A small numpy ray-marcher for simple 3D objects: the shapes-3d twin's data and ground-truth views.

Objects are signed distance functions (SDFs) centred at the origin, fitting in a sphere of radius
~0.6. A pinhole camera looks at the origin from spherical coordinates:

    polar    degrees from the +z (up) axis: 90 = level with the object, 60 = 30 degrees above it
    azimuth  degrees around +z, **counter-clockwise seen from above**, 0 on the +x axis
    radius   distance from the origin (the twin is trained at ``RADIUS``)

so position = radius * (sin(polar) cos(azimuth), sin(polar) sin(azimuth), cos(polar)). Increasing the
azimuth moves the camera to the right around the object (the object appears to turn to the left),
which is Zero123's convention for a positive delta azimuth (see unlearning/models/zero123.py).

Shading is Lambertian: a key light fixed in the world (so the object has a lit and a dark side, which
turns with the object as the camera moves), a weak fill light from the camera, and ambient light;
the background is white, as in Zero123's renders. Anti-aliased by 2x supersampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ["sphere", "cube", "pyramid", "cylinder", "cone", "torus", "capsule", "octahedron"]
COLOURS = {
    "red": (215, 45, 40),
    "green": (45, 165, 65),
    "blue": (45, 85, 220),
    "yellow": (235, 200, 40),
    "purple": (145, 65, 185),
    "orange": (240, 135, 35),
    "cyan": (40, 180, 190),
    "grey": (110, 110, 115),
}
RADIUS = 2.0
FOV_DEGREES = 40.0
POLAR_RANGE = (45.0, 105.0)  # polar angles (degrees) the twin is trained and validated for
KEY_LIGHT = np.array([0.45, -0.35, 0.82])
KEY_LIGHT = KEY_LIGHT / np.linalg.norm(KEY_LIGHT)


@dataclass(frozen=True)
class Object3D:
    shape: str
    colour: str

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; one of {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; one of {', '.join(COLOURS)}")

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


# ---- signed distance functions (points p: (..., 3)) ------------------------------------------------
def _length(v: np.ndarray) -> np.ndarray:
    return np.sqrt((v * v).sum(-1))


def _sphere(p):
    return _length(p) - 0.5


def _box(p, half=(0.36, 0.36, 0.36)):
    q = np.abs(p) - np.asarray(half)
    return _length(np.maximum(q, 0)) + np.minimum(q.max(-1), 0)


def _cylinder(p, r=0.34, h=0.42):
    d = np.stack([np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - r, np.abs(p[..., 2]) - h], -1)
    return np.minimum(d.max(-1), 0) + _length(np.maximum(d, 0))


def _cone(p, r=0.45, h=0.9):
    """Upright cone, base radius r at z = -h/2, apex at z = +h/2 (exact 2D distance in (radial, z))."""
    q = np.stack([np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2), p[..., 2] + h / 2], -1)  # base at q_z = 0
    a, b = np.array([0.0, h]), np.array([r, 0.0])  # apex, base rim
    ab = b - a
    t = np.clip(((q - a) * ab).sum(-1) / (ab @ ab), 0, 1)
    d_side = _length(q - (a + t[..., None] * ab))
    d_base = _length(np.stack([np.maximum(q[..., 0] - r, 0), q[..., 1]], -1))
    inside = (q[..., 1] > 0) & (q[..., 0] * h + q[..., 1] * r < r * h)
    return np.where(inside, -np.minimum(d_side, np.abs(q[..., 1])), np.minimum(d_side, d_base))


def _pyramid(p, half=0.42, h=0.8):
    """Square pyramid (base 2*half, axis-aligned, at z = -h/2), as the intersection of half-spaces: a
    bound, not an exact distance, which sphere tracing tolerates with a step factor below 1."""
    z = p[..., 2] + h / 2
    n = np.array([h, half]) / np.hypot(h, half)  # face normal in the (horizontal, up) plane
    faces = [n[0] * (s * p[..., i]) + n[1] * z - n[1] * h for i in (0, 1) for s in (1, -1)]
    return np.maximum.reduce([*faces, -z])


def _torus(p, big=0.36, small=0.14):
    """A standing ring in the x-z plane (its hole faces the +-y axis), so its outline turns with azimuth."""
    q = np.stack([np.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2) - big, p[..., 1]], -1)
    return _length(q) - small


def _capsule(p, r=0.26, h=0.28):
    q = p.copy()
    q[..., 2] = p[..., 2] - np.clip(p[..., 2], -h, h)
    return _length(q) - r


def _octahedron(p, s=0.6):
    return (np.abs(p).sum(-1) - s) * 0.57735027


SDF = {
    "sphere": _sphere, "cube": _box, "pyramid": _pyramid, "cylinder": _cylinder, "cone": _cone,
    "torus": _torus, "capsule": _capsule, "octahedron": _octahedron,
}


# ---- camera and rendering -------------------------------------------------------------------------
def camera_position(polar: float, azimuth: float, radius: float = RADIUS) -> np.ndarray:
    th, ph = np.radians(polar), np.radians(azimuth)
    return radius * np.array([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)])


def _rays(polar: float, azimuth: float, radius: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    eye = camera_position(polar, azimuth, radius)
    forward = -eye / np.linalg.norm(eye)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight down or up
        right = np.array([0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    f = np.tan(np.radians(FOV_DEGREES) / 2)
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(coords * f, -coords * f)  # row 0 is the top of the image
    d = forward + u[..., None] * right + v[..., None] * true_up
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(eye, d.shape).copy(), d


def render(obj: Object3D, polar: float = 75.0, azimuth: float = 0.0, radius: float = RADIUS, size: int = 32,
           supersample: int = 2, iterations: int = 64) -> np.ndarray:
    """One view of ``obj`` as uint8 (size, size, 3) on a white background."""
    if not 0.0 < polar < 180.0:
        raise ValueError(f"polar must be strictly between 0 and 180 degrees, got {polar}")
    if not radius > 0.8:
        raise ValueError(f"radius must be above 0.8 (outside the object), got {radius}")
    sdf = SDF[obj.shape]
    n = size * supersample
    origin, direction = _rays(polar, azimuth, radius, n)
    o, d = origin.reshape(-1, 3), direction.reshape(-1, 3)
    t = np.full(len(o), radius - 0.9)
    hit = np.zeros(len(o), bool)
    active = np.ones(len(o), bool)
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        dist = sdf(o[idx] + t[idx, None] * d[idx])
        t[idx] += 0.8 * dist
        done = dist < 1e-3
        hit[idx[done]] = True
        gone = t[idx] > radius + 1.0
        active[idx[done | gone]] = False
    colour = np.full((len(o), 3), 255.0)
    if hit.any():
        p = o[hit] + t[hit, None] * d[hit]
        eps = 1e-3
        normal = np.stack([sdf(p + e) - sdf(p - e) for e in np.eye(3) * eps], -1)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-9
        key = np.clip(normal @ KEY_LIGHT, 0, None)
        fill = np.clip((normal * -d[hit]).sum(-1), 0, None)
        light = 0.32 + 0.55 * key + 0.25 * fill
        colour[hit] = np.clip(np.asarray(COLOURS[obj.colour], float) * light[:, None], 0, 255)
    img = colour.reshape(n, n, 3)
    if supersample > 1:
        img = img.reshape(size, supersample, size, supersample, 3).mean((1, 3))
    return np.round(img).astype(np.uint8)


def render_views(obj: Object3D, polars, azimuths, **kw) -> np.ndarray:
    """Views at every (polar, azimuth) pair: uint8 (len(polars), len(azimuths), size, size, 3)."""
    return np.stack([np.stack([render(obj, p, a, **kw) for a in azimuths]) for p in polars])


def all_objects() -> list[Object3D]:
    return [Object3D(s, c) for s in SHAPES for c in COLOURS]
