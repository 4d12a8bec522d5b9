"""The toy world: procedural text-video pairs of one coloured shape moving on a coloured background.

Base domain: "a red circle moving left on a black background" (constant velocity, random start).
Downstream domain (never seen by the base teacher): "a red circle bouncing left on a black background"
(faster, reflects off the walls). Rendering is numpy, seeded, deterministic, anti-aliased by
supersampling, so sub-pixel motion is representable. DESIGN §4.

Shapes: videos are float32 [F, H, W, 3] in [0, 1] (frame-major, channels last).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "magenta": (0.85, 0.1, 0.85),
    "cyan": (0.1, 0.85, 0.9),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.45, 0.45, 0.45),
    "white": (1.0, 1.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit (dy, dx) in image coordinates (y down)
    "left": (0.0, -1.0),
    "right": (0.0, 1.0),
    "up": (-1.0, 0.0),
    "down": (1.0, 0.0),
}
MOTIONS = ("moving", "bouncing")  # base domain, downstream domain
DOMAIN_MOTION = {"base": "moving", "downstream": "bouncing"}


@dataclass(frozen=True, kw_only=True)
class WorldSpec:
    """Geometry of the toy world; every renderer, parser and model size derives from it."""

    height: int = 32              # pixels
    width: int = 32               # pixels
    num_frames: int = 9           # pixel frames per video (Wan convention: T*k + 1)
    object_size: float = 10.0     # bounding-box side of every shape, pixels
    speed: float = 2.0            # px per frame: one VAE patch (4 px) per latent frame (2 frames), an exact latent shift
    bounce_speed: float = 4.0     # pixels per frame in the downstream domain
    supersample: int = 4          # anti-aliasing factor

    def __post_init__(self):
        travel = self.speed * (self.num_frames - 1)
        if min(self.height, self.width) < self.object_size + travel + 2:
            raise ValueError(
                f"WorldSpec: a {self.object_size}px object moving {travel}px does not fit in "
                f"{self.height}x{self.width}; enlarge the frame or lower speed/num_frames"
            )


@dataclass(frozen=True)
class Condition:
    """One video's generative parameters; the prompt is derived from them."""

    shape: str
    colour: str
    background: str
    direction: str
    motion: str = "moving"
    start: tuple[float, float] = (0.0, 0.0)  # centroid (y, x) of frame 0, pixels

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion} {self.direction} on a {self.background} background"


def vocabulary() -> list[str]:
    """Every word any toy prompt can contain (both domains), in a fixed order."""
    words = ["a", "on", "background", *SHAPES, *COLOURS, *BACKGROUNDS, *DIRECTIONS, *MOTIONS]
    return list(dict.fromkeys(words))


def attribute_grid(domain: str = "base") -> list[Condition]:
    """All (shape, colour, background, direction) combinations (no palette colour equals a background)."""
    motion = DOMAIN_MOTION[domain]
    return [
        Condition(shape, colour, background, direction, motion)
        for shape, colour, background, direction in itertools.product(SHAPES, COLOURS, BACKGROUNDS, DIRECTIONS)
    ]


def sample_conditions(num: int, seed: int, domain: str = "base", spec: WorldSpec = WorldSpec()) -> list[Condition]:
    """Draw `num` conditions uniformly over the attribute grid, each with a random start that keeps
    the whole trajectory inside the frame (the source of multimodality)."""
    rng = np.random.default_rng(seed)
    grid = attribute_grid(domain)
    picks = rng.integers(0, len(grid), size=num)
    return [dataclasses.replace(grid[i], start=_random_start(grid[i], rng, spec)) for i in picks]


def with_fresh_starts(conds: list[Condition], seed: int, spec: WorldSpec = WorldSpec()) -> list[Condition]:
    """The same prompts with new random start positions (valid for each condition's own motion)."""
    rng = np.random.default_rng(seed)
    return [dataclasses.replace(c, start=_random_start(c, rng, spec)) for c in conds]


def _random_start(cond: Condition, rng: np.random.Generator, spec: WorldSpec) -> tuple[float, float]:
    half = spec.object_size / 2 + 1
    dy, dx = DIRECTIONS[cond.direction]
    travel = spec.speed * (spec.num_frames - 1) if cond.motion == "moving" else 0.0
    lo = [half + travel * max(0.0, -d) for d in (dy, dx)]
    hi = [size - half - travel * max(0.0, d) for size, d in ((spec.height, dy), (spec.width, dx))]
    return (float(rng.uniform(lo[0], hi[0])), float(rng.uniform(lo[1], hi[1])))


def trajectory(cond: Condition, spec: WorldSpec = WorldSpec()) -> np.ndarray:
    """Centroid (y, x) per frame, [F, 2]. Moving: constant velocity. Bouncing: reflect at the walls."""
    d = np.array(DIRECTIONS[cond.direction])
    speed = spec.speed if cond.motion == "moving" else spec.bounce_speed
    f = np.arange(spec.num_frames)[:, None]
    pos = np.array(cond.start)[None, :] + f * speed * d[None, :]
    if cond.motion == "bouncing":
        half = spec.object_size / 2
        for axis, size in ((0, spec.height), (1, spec.width)):
            lo, span = half, size - 2 * half
            folded = np.mod(pos[:, axis] - lo, 2 * span)       # reflect on [lo, lo + span]
            pos[:, axis] = lo + np.where(folded > span, 2 * span - folded, folded)
    return pos


def shape_mask(shape: str, centre: tuple[float, float], spec: WorldSpec) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], [H, W], of one shape centred at (y, x) pixels."""
    s = spec.supersample
    ys = (np.arange(spec.height * s) + 0.5) / s - centre[0]
    xs = (np.arange(spec.width * s) + 0.5) / s - centre[1]
    y, x = np.meshgrid(ys, xs, indexing="ij")
    h = spec.object_size / 2
    if shape == "circle":
        inside = x**2 + y**2 <= h**2
    elif shape == "square":
        inside = (np.abs(x) <= h * 0.8862) & (np.abs(y) <= h * 0.8862)  # same area as the circle
    elif shape == "triangle":  # apex up, base down; centroid (2/3 of the height from the apex) at 0
        top, bottom = -h * 1.1, h * 0.55
        half_width = (y - top) / (bottom - top) * h
        inside = (y >= top) & (y <= bottom) & (np.abs(x) <= half_width)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.reshape(spec.height, s, spec.width, s).mean(axis=(1, 3))


def render(cond: Condition, spec: WorldSpec = WorldSpec()) -> np.ndarray:
    """Render one condition as a video, float32 [F, H, W, 3] in [0, 1]."""
    bg = np.array(BACKGROUNDS[cond.background], dtype=np.float32)
    fg = np.array(COLOURS[cond.colour], dtype=np.float32)
    frames = []
    for centre in trajectory(cond, spec):
        alpha = shape_mask(cond.shape, tuple(centre), spec)[..., None].astype(np.float32)
        frames.append(bg * (1 - alpha) + fg * alpha)
    return np.stack(frames)


def render_batch(conds: list[Condition], spec: WorldSpec = WorldSpec()) -> np.ndarray:
    """Render many conditions, float32 [N, F, H, W, 3]."""
    return np.stack([render(c, spec) for c in conds])
