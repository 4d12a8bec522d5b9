"""Rule-based parser of toy-world videos (no learned weights): recovers the prompt attributes.

The evaluation metrics read generated videos back through this parser, so each step is a
plain, documented measurement (numpy + scipy.ndimage only):

1. Background: channel-wise median of the border pixels of all frames (the object covers
   at most ~10% of the border), matched to the nearest BACKGROUNDS entry. The measured
   colour, not the palette entry, is used below, so small colour shifts do not matter.
2. Foreground support: Euclidean RGB distance to the background > FG_THRESHOLD (0.15).
   The closest object/background pair (green on gray) is 0.61 apart, while Gaussian noise of
   std 0.03 per channel exceeds 0.15 with probability ~1e-5 per pixel.
3. Blobs: 8-connected components of the support within each frame (scipy.ndimage.label),
   grown by one pixel so the faint anti-aliased/blurred rim is measured too.
4. Per blob: colour = mean of the core pixels (distance >= 90% of the blob's 90th-percentile
   distance); soft coverage alpha = projection of (pixel - bg) onto (colour - bg), clipped to
   [0, 1]; area = sum(alpha); centroid = alpha-weighted mean of pixel centres (pixel i
   spans [i, i+1], as in toyworld). Blobs with area below 1/4 of the circle's area
   (MIN_AREA_FRACTION; the triangle has 0.53 of it) are dropped as noise or debris.
5. Shape, from two sub-pixel features of alpha: skew = skewness of the row profile (exactly
   -2*sqrt(2)/5 = -0.566 for the apex-up triangle, whose width grows linearly downwards; 0
   for the symmetric circle and square), and fill = area / (max column sum * max row sum),
   the area over a sub-pixel bounding box (square 1, circle pi/4; the square's flat
   profiles make its value blur-invariant). Triangle if skew < -0.283 (half-way), else
   square if fill > 0.893 (midpoint), else circle. Fill alone cannot find the triangle
   (nominally 0.5): its peaked profiles lose their maxima to blur, lifting it to ~0.8.
6. Tracking: blobs are linked frame to frame by nearest centroid (Hungarian assignment,
   gated at one object size); the main object is the track with the largest summed area.
   Its colour/shape come from the median colour, skew and fill over its frames; count is
   the median (upper, so always a count) of the per-frame blob counts.
7. Motion: dominant axis = larger median |per-frame step|. A step shorter than
   FULL_STEP_FRACTION of the median step hides a wall reflection, so the velocity is the
   least-squares slope over the first run of full, same-sign steps, and its sign is flipped
   once per short step before that run (initial direction of a bouncing object that starts
   near the wall it moves towards), but only if a reflection fits: the wall (where the object
   touches the frame edge) must lie where the short steps put it, within WALL_TOLERANCE. A
   slow first step far from any wall is uneven motion, not a bounce. Speeds below
   MIN_SPEED_FRACTION of the base speed give direction None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from anyflow.toyworld import BACKGROUNDS, COLOURS, DIRECTIONS, WorldSpec

FG_THRESHOLD = 0.15         # RGB distance to the background; see module docstring, step 2
CORE_FRACTION = 0.9         # core: >= 90% of the blob's 90th-percentile distance to bg, so rim
                            # pixels mixed with bg (a blue/white mix reads cyan) stay out
MIN_AREA_FRACTION = 0.25    # of the circle/square area; the triangle is 0.53 of it, noise specks ~1 px
FULL_STEP_FRACTION = 0.75   # see _direction
WALL_TOLERANCE = 1.0       # px: a reflection must put the wall where the steps say it is, to within this (step 7)
MIN_SPEED_FRACTION = 0.25   # of spec.speed (0.5 px/frame at the default 2), >10x the velocity jitter on noisy videos
SQUARE_FILL, CIRCLE_FILL = 1.0, np.pi / 4  # area / bounding-box area, exact for unblurred shapes
TRIANGLE_SKEW = -2 * np.sqrt(2) / 5  # -0.566: skewness of a linear ramp (apex-up triangle's rows)
_IN_FRAME = np.zeros((3, 3, 3), dtype=bool)
_IN_FRAME[1] = True         # 8-connectivity inside a frame, none across frames


@dataclass(frozen=True)
class ParsedVideo:
    """What the parser read from one video; None/0/NaN where no object was found."""

    background: str          # nearest BACKGROUNDS name
    colour: str | None       # nearest COLOURS name of the main object
    shape: str | None        # one of SHAPES
    direction: str | None    # initial direction (DIRECTIONS key); None if no object or static
    speed: float             # fitted initial speed, px/frame
    count: int               # median over frames of the per-frame blob count
    counts: tuple[int, ...]  # per-frame blob counts
    trajectory: np.ndarray   # [F, 2] centroid (y, x) of the main object; NaN rows where missing
    areas: np.ndarray | None = None       # [F] soft area of the main object, px; NaN where missing
    background_rgb: np.ndarray | None = None  # measured background colour (RGB)
    colour_rgb: np.ndarray | None = None      # measured colour of the main object (RGB), before palette matching

    @property
    def single_object_share(self) -> float:
        """Fraction of frames with exactly one object (the count item of ToyBench and DownstreamBench)."""
        return float(np.mean([n == 1 for n in self.counts]))


@dataclass(frozen=True)
class _Blob:
    area: float
    centroid: np.ndarray  # (y, x), pixels
    colour: np.ndarray    # measured RGB of the core
    fill: float
    skew: float


def nearest_name(value: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    """Name of the palette entry closest to `value` in RGB."""
    names = list(palette)
    dist = np.linalg.norm(np.array([palette[n] for n in names]) - value, axis=1)
    return names[int(np.argmin(dist))]


def _background(video: np.ndarray) -> np.ndarray:
    """Channel-wise median of the border pixels of every frame, RGB [3]."""
    border = [video[:, 0], video[:, -1], video[:, 1:-1, 0], video[:, 1:-1, -1]]
    return np.median(np.concatenate(border, axis=1).reshape(-1, 3), axis=0)


def _shape_features(alpha: np.ndarray) -> tuple[float, float]:
    """(fill, vertical skewness) of a coverage crop: fill = area / (max column sum * max row sum),
    skewness = third standardised moment of the row profile (negative: mass low, apex up)."""
    area = max(float(alpha.sum()), 1e-6)
    fill = area / max(float(alpha.sum(axis=0).max() * alpha.sum(axis=1).max()), 1e-6)
    rows = alpha.sum(axis=1) / area
    dy = np.arange(len(rows)) - (rows * np.arange(len(rows))).sum()
    var = max(float((rows * dy**2).sum()), 1e-6)
    return fill, float((rows * dy**3).sum()) / var**1.5


def _measure(pix: np.ndarray, dist: np.ndarray, region: np.ndarray, support: np.ndarray,
             bg: np.ndarray, offset: tuple[int, int]) -> _Blob:
    """Area, centroid, colour and shape features of one blob; arrays are its [h, w] crop (step 4)."""
    core = support & (dist >= CORE_FRACTION * np.percentile(dist[support], 90))
    colour = pix[core].mean(axis=0)
    axis = colour - bg
    alpha = np.clip((pix - bg) @ axis / max(float(axis @ axis), 1e-6), 0.0, 1.0) * region
    area = float(alpha.sum())
    ys, xs = np.indices(alpha.shape) + 0.5
    centroid = np.array([(alpha * ys).sum(), (alpha * xs).sum()]) / max(area, 1e-6) + offset
    return _Blob(area, centroid, colour, *_shape_features(alpha))


def _shape(fill: float, skew: float) -> str:
    """Triangle if skewed at least half-way to its exact value, else square/circle by the
    fill midpoint. Fill alone fails: blur and noise lift the triangle's 0.5 to ~0.8."""
    if skew < TRIANGLE_SKEW / 2:
        return "triangle"
    return "square" if fill > (SQUARE_FILL + CIRCLE_FILL) / 2 else "circle"


def _blobs(video: np.ndarray, bg: np.ndarray, spec: WorldSpec) -> list[list[_Blob]]:
    """Blobs of every frame (steps 2-4), each list in label order."""
    dist = np.linalg.norm(video - bg, axis=-1)
    labels, _ = ndimage.label(dist > FG_THRESHOLD, structure=_IN_FRAME)
    grown = np.where(labels > 0, labels, ndimage.grey_dilation(labels, footprint=_IN_FRAME))
    min_area = MIN_AREA_FRACTION * np.pi / 4 * spec.object_size**2
    frames: list[list[_Blob]] = [[] for _ in range(len(video))]
    for idx, sl in enumerate(ndimage.find_objects(grown), start=1):
        if sl is None:
            continue
        crop = (sl[0].start, sl[1], sl[2])
        blob = _measure(video[crop], dist[crop], grown[crop] == idx, labels[crop] == idx,
                        bg, (sl[1].start, sl[2].start))
        if blob.area >= min_area:
            frames[sl[0].start].append(blob)
    return frames


def _tracks(frames: list[list[_Blob]], gate: float) -> list[dict[int, _Blob]]:
    """Link blobs across frames by Hungarian assignment on centroid distance (step 5)."""
    tracks: list[dict[int, _Blob]] = []
    for t, blobs in enumerate(frames):
        last = [tr[max(tr)].centroid for tr in tracks]
        cost = np.array([[np.linalg.norm(p - b.centroid) for b in blobs] for p in last])
        used = set()
        if last and blobs:
            for r, c in zip(*linear_sum_assignment(cost)):
                if cost[r, c] <= gate:
                    tracks[r][t] = blobs[c]
                    used.add(c)
        tracks += [{t: b} for i, b in enumerate(blobs) if i not in used]
    return tracks


def _direction(traj: np.ndarray, spec: WorldSpec) -> tuple[str | None, float]:
    """Initial direction and speed of a centroid trajectory with NaN gaps (step 7).

    An object starting a px (< v) from the wall it moves towards at v px/frame reflects in its
    first step and moves 2a - v net: the sign flips only if a < v/2, and the step (v - 2a)
    is then shorter than the full step v (the median step). A start 1 px from the wall, the
    toyworld minimum, gives 2 of 4 px, below the FULL_STEP_FRACTION = 0.75 cut; only starts
    within v/8 = 0.5 px of the wall, where the initial direction is moot, pass as full.
    """
    t = np.flatnonzero(~np.isnan(traj[:, 0]))
    if len(t) < 2:
        return None, 0.0
    steps = np.diff(traj[t], axis=0) / np.diff(t)[:, None]
    axis = int(np.argmax(np.median(np.abs(steps), axis=0)))
    s = steps[:, axis]
    full = np.abs(s) >= FULL_STEP_FRACTION * np.median(np.abs(s))
    k = int(np.argmax(full))
    end = k + 1
    while end < len(s) and full[end] and np.sign(s[end]) == np.sign(s[k]):
        end += 1
    velocity = np.polyfit(t[k:end + 1], traj[t[k:end + 1], axis], 1)[0]
    if abs(velocity) < MIN_SPEED_FRACTION * spec.speed:
        return None, float(abs(velocity))
    heading = np.sign(velocity) * (-1) ** k
    if k % 2 and not _reflection_fits(traj[t[[0, k]], axis], heading, abs(velocity) * (t[k] - t[0]), spec, axis):
        heading = np.sign(velocity)  # no wall where a bounce would need one: uneven motion, not a reflection
    unit = np.zeros(2)
    unit[axis] = heading
    return max(DIRECTIONS, key=lambda n: float(np.dot(DIRECTIONS[n], unit))), float(abs(velocity))


def _reflection_fits(ends: np.ndarray, heading: float, travel: float, spec: WorldSpec, axis: int) -> bool:
    """Whether one wall reflection explains the short steps before the full-speed run (step 7).

    An object a px from the wall it heads for (`heading` ±1 along `axis`; the wall is where it touches
    the frame edge, object_size / 2 in from it) that covers `travel` px reflects once and ends
    2a − travel further along `heading`. So the measured start `ends[0]` and end `ends[1]` predict
    a = (travel + (ends[1] − ends[0]) · heading) / 2, which must match the measured distance to the
    wall within WALL_TOLERANCE. Otherwise no wall is there to bounce off."""
    wall = spec.object_size / 2 if heading < 0 else (spec.height, spec.width)[axis] - spec.object_size / 2
    predicted = (travel + (ends[1] - ends[0]) * heading) / 2
    return abs(abs(wall - ends[0]) - predicted) <= WALL_TOLERANCE


def parse_video(video: np.ndarray, spec: WorldSpec = WorldSpec()) -> ParsedVideo:
    """Parse one video, float [F, H, W, 3] in [0, 1], into its prompt attributes and trajectory."""
    video = np.asarray(video, dtype=np.float32)
    bg = _background(video)
    frames = _blobs(video, bg, spec)
    counts = tuple(len(blobs) for blobs in frames)
    count = sorted(counts)[len(counts) // 2]
    traj = np.full((len(video), 2), np.nan)
    tracks = _tracks(frames, gate=spec.object_size)
    background = nearest_name(bg, BACKGROUNDS)
    areas = np.full(len(video), np.nan)
    if not tracks:
        return ParsedVideo(background, None, None, None, 0.0, count, counts, traj, areas, bg)
    main = max(tracks, key=lambda tr: sum(b.area for b in tr.values()))
    for t, blob in main.items():
        traj[t] = blob.centroid
        areas[t] = blob.area
    colour_rgb = np.median([b.colour for b in main.values()], axis=0)
    colour = nearest_name(colour_rgb, COLOURS)
    shape = _shape(*np.median([(b.fill, b.skew) for b in main.values()], axis=0))
    direction, speed = _direction(traj, spec)
    return ParsedVideo(background, colour, shape, direction, speed, count, counts, traj, areas, bg, colour_rgb)


def parse_batch(videos: np.ndarray, spec: WorldSpec = WorldSpec()) -> list[ParsedVideo]:
    """Parse a batch [N, F, H, W, 3] of videos."""
    return [parse_video(video, spec) for video in videos]
