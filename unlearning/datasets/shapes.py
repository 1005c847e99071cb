"""Procedural captioned shapes: the data of the shapes-sd twin (and its evaluator).

Every image is one shape on a plain background, drawn at 32x32 with 2x supersampling:

    shapes   circle, square, triangle, star, heart, cross, ring, diamond
    colours  red, green, blue, yellow, purple, orange, white, black
    nuisance size (small / large), fill style (filled / outlined), background (grey / white / black),
             position jitter (+-3 px, never captioned)

Captions come from templates that name any subset of the attributes ("a red star on a grey
background", "a star", "a star shape", "a red shape", "a picture of a large outlined star"), so a
concept can be an object (star), an attribute (red) or a style (outlined), and paraphrases of a
concept are in-distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SHAPES = ["circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"grey": (128, 128, 128), "white": (250, 250, 250), "black": (12, 12, 12)}
SIZES = {"small": 0.5, "large": 0.8}  # outer radius as a fraction of the half-width
STYLES = ["filled", "outlined"]
IMAGE_SIZE = 32
SUPERSAMPLE = 2

# every word a caption can use (the tokenizer's whole-word vocabulary is built from this list)
CAPTION_WORDS = sorted(
    {*SHAPES, *COLOURS, *BACKGROUNDS, *SIZES, *STYLES, "a", "an", "on", "background", "shape", "picture", "of", "the", "photo", "drawing"}
)


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    size: str = "large"
    style: str = "filled"
    background: str = "grey"
    dx: int = 0
    dy: int = 0
    bg_tint: tuple[int, int, int] = (0, 0, 0)  # evaluator training only: shade variations the captions do not name
    fg_tint: tuple[int, int, int] = (0, 0, 0)


def _polygon_mask(vertices: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd ray casting of points (xs, ys) against a closed polygon (V, 2)."""
    inside = np.zeros(xs.shape, dtype=bool)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
        crosses = (b > ys) != (d > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = a + (ys - b) * (c - a) / (d - b)
        inside ^= crosses & (xs < x_cross)
    return inside


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _shape_mask(shape: str, radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Inside-mask of a shape of outer radius ``radius`` centred at 0 (y points up)."""
    r = np.hypot(xs, ys)
    if shape == "circle":
        return r < radius
    if shape == "ring":
        return (r < radius) & (r > 0.55 * radius)
    if shape == "square":
        return np.maximum(np.abs(xs), np.abs(ys)) < 0.78 * radius
    if shape == "diamond":
        return np.abs(xs) / 0.8 + np.abs(ys) < radius
    if shape == "triangle":
        return _polygon_mask(_regular(3, 1.1 * radius, np.pi / 2) + [0, -0.15 * radius], xs, ys)
    if shape == "star":
        outer, inner = _regular(5, 1.08 * radius, np.pi / 2), _regular(5, 0.45 * radius, np.pi / 2 + np.pi / 5)
        return _polygon_mask(np.stack([outer, inner], axis=1).reshape(10, 2), xs, ys)
    if shape == "cross":
        a, b = 0.32 * radius, 0.95 * radius
        v = [(-a, b), (a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b), (-a, -b), (-a, -a), (-b, -a), (-b, a), (-a, a)]
        return _polygon_mask(np.array(v), xs, ys)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        hx = 16 * np.sin(t) ** 3
        hy = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        v = np.stack([hx, hy + 2.5], axis=1) * (radius / 16.5)
        return _polygon_mask(v, xs, ys)
    raise ValueError(f"unknown shape '{shape}'")


_N = IMAGE_SIZE * SUPERSAMPLE
_GRID = (np.arange(_N) + 0.5) / _N * 2 - 1  # pixel centres in [-1, 1]


def render(spec: ShapeSpec) -> np.ndarray:
    """One image, uint8 (32, 32, 3)."""
    ys, xs = np.meshgrid(-_GRID, _GRID, indexing="ij")  # row 0 is the top: y = +1
    shift = 2.0 / IMAGE_SIZE
    xs = xs - spec.dx * shift
    ys = ys + spec.dy * shift
    mask = _shape_mask(spec.shape, SIZES[spec.size], xs, ys)
    if spec.style == "outlined":
        mask = mask & ~ndimage.binary_erosion(mask, iterations=3 * SUPERSAMPLE // 2 + 1)
    fg = np.array(COLOURS[spec.colour], dtype=np.float32) + np.array(spec.fg_tint, dtype=np.float32)
    bg = np.array(BACKGROUNDS[spec.background], dtype=np.float32) + np.array(spec.bg_tint, dtype=np.float32)
    hi = np.where(mask[..., None], fg, bg)
    lo = hi.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(lo + 0.5, 0, 255).astype(np.uint8)


def random_spec(rng: np.random.Generator, *, shape: str | None = None, colour: str | None = None, tint: int = 0) -> ShapeSpec:
    """A random spec; ``tint`` > 0 shifts background (up to tint) and foreground (up to tint / 3) per channel."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    backgrounds = [b for b in BACKGROUNDS if b != colour]
    weights = np.array([3.0 if b == "grey" else 1.0 for b in backgrounds])
    background = backgrounds[rng.choice(len(backgrounds), p=weights / weights.sum())]
    return ShapeSpec(
        shape=shape,
        colour=colour,
        size="small" if rng.random() < 0.35 else "large",
        style="outlined" if rng.random() < 0.2 else "filled",
        background=background,
        dx=int(rng.integers(-3, 4)),
        dy=int(rng.integers(-3, 4)),
        bg_tint=tuple(int(v) for v in rng.integers(-tint, tint + 1, 3)) if tint else (0, 0, 0),
        fg_tint=tuple(int(v) for v in rng.integers(-(tint // 3), tint // 3 + 1, 3)) if tint else (0, 0, 0),
    )


def caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A caption naming a random subset of the attributes (the shape and colour most of the time)."""
    words = []
    if rng.random() < 0.3:
        words.append(spec.size)
    if spec.style == "outlined" and rng.random() < 0.7:
        words.append("outlined")
    elif spec.style == "filled" and rng.random() < 0.1:
        words.append("filled")
    if rng.random() < 0.8:
        words.append(spec.colour)
    with_shape = rng.random() < 0.85
    words.append(spec.shape if with_shape else "shape")
    desc = " ".join(words)
    template = rng.choice(["a {}", "a {}", "a {}", "{}", "a picture of a {}", "a drawing of a {}"] + (["a {} shape"] if with_shape else []))
    text = template.format(desc)
    if rng.random() < 0.4:
        text += f" on a {spec.background} background"
    return text.replace("a outlined", "an outlined").replace("a orange", "an orange")


def dataset(n: int, seed: int, tint: int = 0) -> tuple[np.ndarray, list[ShapeSpec]]:
    """n random images (n, 32, 32, 3) uint8 and their specs."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, tint=tint) for _ in range(n)]
    return np.stack([render(s) for s in specs]), specs
