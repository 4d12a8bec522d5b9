"""Downstream domains of the toy world (DESIGN §4): what the base teacher never saw, for the fine-tuning stage
(paper §5, Fig. 7-8). Each `Domain` has seeded conditions, a renderer and DownstreamBench, its per-video items
in [0, 1] with the headline `score`: the behaviour the base student lacks.

- `purple` (the toy preset's): the base world with a new object colour, "a purple circle moving left on a black
  background", RGB (0.5, 0, 1), at least 0.39 from every base colour. The toy tokenizer's vocabulary was fixed
  when the teacher was built, so "purple" encodes as <unk>, a token no base prompt contains: a new word for a
  frozen text encoder. Items: colour (the parsed object colour, matched over the base palette plus purple, is
  purple), shape, direction, count (fraction of frames with exactly one object); score = colour.
- `bouncing`: toyworld's downstream motion, "a red circle bouncing left on a black background": 4 px/frame,
  reflected at the walls. Items: motion = exp(−RMS / 2 px) of the parsed centroid track against the best-fitting
  bouncing trajectory (any of the 4 directions, any start), 1 for the bouncing law and low for the base domain's
  2 px/frame straight motion; speed = exp(−|median frame-to-frame speed − bounce speed| / 1 px); colour; count;
  score = mean(motion, speed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anyflow import toybench, toyworld
from anyflow.toyparser import nearest_name, parse_batch
from anyflow.toyworld import Condition, WorldSpec

PURPLE = (0.5, 0.0, 1.0)
OBJECT_COLOURS = {**toyworld.COLOURS, "purple": PURPLE}
MOTION_R_PX = 2.0
SPEED_S_PX = 1.0
_START_GRID_PX = 0.25


@dataclass(frozen=True)
class Domain:
    """One downstream domain: `conditions(num, seed, world)`, `render(conds, world)` → [N, F, H, W, 3] and
    `scores(videos, conds, world)` → per-video items (`items`, plus the headline "score")."""

    name: str
    measures: str                 # what the headline score measures (plot labels, logs)
    conditions: Callable[[int, int, WorldSpec], list[Condition]]
    render: Callable[[list[Condition], WorldSpec], np.ndarray]
    scores: Callable[[np.ndarray, list[Condition], WorldSpec], dict[str, np.ndarray]]
    items: tuple[str, ...]


# ------------------------------------------------------------------------------------------------ purple

def purple_conditions(num: int, seed: int, world: WorldSpec = WorldSpec()) -> list[Condition]:
    """`num` base-domain conditions (shape × background × direction, random start) with a purple object."""
    rng = np.random.default_rng(seed)
    grid = [Condition(shape, "purple", background, direction) for shape in toyworld.SHAPES
            for background in toyworld.BACKGROUNDS for direction in toyworld.DIRECTIONS]
    return toyworld.with_fresh_starts([grid[i] for i in rng.integers(0, len(grid), size=num)], seed + 1, world)


def render_in_colour(conds: list[Condition], world: WorldSpec = WorldSpec()) -> np.ndarray:
    """Render conditions whose colour may be outside the base palette (OBJECT_COLOURS), [N, F, H, W, 3]; for base
    colours it equals toyworld.render_batch (tested). toyworld itself stays unchanged: it is part of the toy
    teacher's code version, so editing it would retire the prebuilt teacher."""
    videos = []
    for cond in conds:
        bg = np.array(toyworld.BACKGROUNDS[cond.background], dtype=np.float32)
        fg = np.array(OBJECT_COLOURS[cond.colour], dtype=np.float32)
        alphas = [toyworld.shape_mask(cond.shape, tuple(c), world)[..., None] for c in toyworld.trajectory(cond, world)]
        videos.append(np.stack([bg * (1 - a) + fg * a for a in np.asarray(alphas, dtype=np.float32)]))
    return np.stack(videos)


def attribute_scores(videos: np.ndarray, conds: list[Condition], world: WorldSpec) -> dict[str, np.ndarray]:
    """colour (matched over OBJECT_COLOURS), and ToyBench's shape, direction and count items; score = colour."""
    parsed = parse_batch(videos, world)
    items = toybench.per_video_scores(videos, conds, world, parsed)
    colour = np.array([float(p.colour_rgb is not None and nearest_name(p.colour_rgb, OBJECT_COLOURS) == c.colour)
                       for c, p in zip(conds, parsed)])
    return {"colour": colour, **{k: items[k] for k in ("shape", "direction", "count")}, "score": colour}


# ---------------------------------------------------------------------------------------------- bouncing

def bouncing_conditions(num: int, seed: int, world: WorldSpec = WorldSpec()) -> list[Condition]:
    return toyworld.sample_conditions(num, seed, "downstream", world)


@functools.lru_cache(maxsize=4)
def _bounce_tracks(world: WorldSpec) -> np.ndarray:
    """Every bouncing trajectory on a 0.25 px start grid, all 4 directions: [K, F, 2] (0.7 s to build, so cached
    per world: the before/after evaluation scores every model at every NFE)."""
    half = world.object_size / 2 + 1
    ys = np.arange(half, world.height - half + 1e-9, _START_GRID_PX)
    xs = np.arange(half, world.width - half + 1e-9, _START_GRID_PX)
    conds = [Condition("circle", "red", "black", d, "bouncing", (float(y), float(x)))
             for d in toyworld.DIRECTIONS for y in ys for x in xs]
    return np.stack([toyworld.trajectory(c, world) for c in conds])


def motion_fit(track: np.ndarray, candidates: np.ndarray) -> float:
    """exp(−RMS / R) of a parsed track [F, 2] (NaN rows missing) against its best-fitting candidate."""
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < 3:
        return 0.0
    rms = np.sqrt(((candidates[:, ok] - track[ok][None]) ** 2).sum(-1).mean(-1)).min()
    return float(np.exp(-rms / MOTION_R_PX))


def bouncing_scores(videos: np.ndarray, conds: list[Condition], world: WorldSpec) -> dict[str, np.ndarray]:
    """motion, speed, colour, count per video (module docstring); score = mean(motion, speed)."""
    candidates = _bounce_tracks(world)
    out = {k: [] for k in ("motion", "speed", "colour", "count")}
    for cond, p in zip(conds, parse_batch(videos, world)):
        ok = ~np.isnan(p.trajectory[:, 0])
        steps = np.linalg.norm(np.diff(p.trajectory[ok], axis=0), axis=1) / np.diff(np.flatnonzero(ok)) \
            if ok.sum() >= 2 else np.array([])
        out["motion"].append(motion_fit(p.trajectory, candidates))
        speed = float(np.median(steps)) if len(steps) else None
        out["speed"].append(float(np.exp(-abs(speed - world.bounce_speed) / SPEED_S_PX)) if speed is not None else 0.0)
        out["colour"].append(float(p.colour == cond.colour))
        out["count"].append(p.single_object_share)
    scores = {k: np.asarray(v) for k, v in out.items()}
    return {**scores, "score": (scores["motion"] + scores["speed"]) / 2}


DOMAINS: dict[str, Domain] = {
    "purple": Domain("purple", "purple objects", purple_conditions, render_in_colour,
                     attribute_scores, ("colour", "shape", "direction", "count")),
    "bouncing": Domain("bouncing", "bouncing motion", bouncing_conditions, toyworld.render_batch, bouncing_scores,
                       ("motion", "speed", "colour", "count")),
}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise ValueError(f"unknown toy downstream domain {name!r}; expected one of {sorted(DOMAINS)}")
    return DOMAINS[name]
