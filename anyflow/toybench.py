"""ToyBench: offline, network-free video metrics for the toy world (reference/evaluation.md §2).

NOT COMPARABLE TO VBENCH: it mirrors VBench's shape (Quality, Semantic, Total = (4Q + S)/5) on a
procedural domain whose ground truth is known, measured with the rule-based parser (anyflow.toyparser).

Per video (so bootstrap CIs are cheap):
  semantic   colour, shape, direction: parsed attribute == prompt (0/1); count: fraction of frames with
             exactly one object; trajectory: exp(−r / R0), r = RMS residual (px) of a straight-line fit
             to the object's centroid track (R0 = 1 px; 0 if fewer than 3 frames are tracked)
  quality    identity: 1 − CV of the object's area over frames (clipped to [0, 1]); flicker:
             TF* = 1 − mean |v_{t+1} − v_t| over pixels that are background in both frames;
             jerk: exp(−J / J0), J = mean ‖c_{t+1} − 2c_t + c_{t−1}‖ (J0 = 1 px); dynamic: 1 if the
             parsed speed > 0.5 px/frame (paired with identity/flicker/jerk, which static or blank
             videos would otherwise win)
Per set:
  distribution  sliced Wasserstein distance (SWD) between standardised space-time patches of the
             videos and of fresh real procedural videos under the same prompts; the real-vs-real floor
             (mean and std over independent real draws) calibrates it: score 1 up to floor + 2·std,
             then exp(−(SWD − floor − 2·std) / floor)
  fidelity   (when the teacher reference from the same noise is given) relative latent error
             ‖x − R‖² / ‖R − mean R‖² and pixel PSNR against the decoded reference (diagnostic, not in Total)
  sharpness  ratio of mean spatial gradient |∇v| to the real reference (< 1 blur, > 1 noise);
             score max(0, 1 − |log ratio|)
  seams      (when the VAE's patch size is given) seam contrast, mean |Δv| across the VAE's patch seams
             ÷ mean |Δv| inside patches, relative to the real reference's (1: as real; > 1: blocking, the
             patch decoder's signature of off-manifold latents; diagnostic, not in Total)
Aggregate: Quality = (identity + flicker + jerk + 0.5·dynamic + distribution + sharpness) / 5.5,
           Semantic = mean(count, colour, shape, direction, trajectory), Total = (4·Quality + Semantic) / 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anyflow import toyworld
from anyflow.toyparser import FG_THRESHOLD, ParsedVideo, parse_batch

R0_PX = 1.0            # trajectory residual scale
J0_PX = 1.0            # jerk scale (constant-velocity data has J ≈ 0)
DYNAMIC_PX_PER_FRAME = 0.5
SEMANTIC_ITEMS = ("count", "colour", "shape", "direction", "trajectory")
QUALITY_WEIGHTS = {"identity": 1.0, "flicker": 1.0, "jerk": 1.0, "dynamic": 0.5, "distribution": 1.0, "sharpness": 1.0}
SET_ITEMS = ("distribution", "sharpness")
PER_VIDEO_ITEMS = SEMANTIC_ITEMS + ("identity", "flicker", "jerk", "dynamic")


def _trajectory_score(traj: np.ndarray) -> float:
    ok = ~np.isnan(traj[:, 0])
    if ok.sum() < 3:
        return 0.0
    t = np.arange(len(traj))[ok]
    resid = []
    for axis in (0, 1):
        coef = np.polyfit(t, traj[ok, axis], 1)
        resid.append(traj[ok, axis] - np.polyval(coef, t))
    rms = float(np.sqrt(np.mean(np.square(resid))))
    return float(np.exp(-rms / R0_PX))


def _jerk_score(traj: np.ndarray) -> float:
    c = traj
    j = c[2:] - 2 * c[1:-1] + c[:-2]
    j = j[~np.isnan(j).any(axis=1)]
    if len(j) == 0:
        return 0.0
    return float(np.exp(-np.linalg.norm(j, axis=1).mean() / J0_PX))


def _identity(areas: np.ndarray) -> float:
    a = areas[~np.isnan(areas)]
    if len(a) < 2 or a.mean() <= 0:
        return 0.0
    return float(np.clip(1 - a.std() / a.mean(), 0, 1))


def _flicker(video: np.ndarray, bg_rgb: np.ndarray) -> float:
    background = np.linalg.norm(video - bg_rgb, axis=-1) <= FG_THRESHOLD         # [F, H, W]
    both = background[1:] & background[:-1]
    if not both.any():
        return 0.0
    diff = np.abs(video[1:] - video[:-1]).mean(axis=-1)
    return float(1 - diff[both].mean())


def per_video_scores(videos: np.ndarray, conds: list[toyworld.Condition], spec: toyworld.WorldSpec,
                     parsed: list[ParsedVideo] | None = None) -> dict[str, np.ndarray]:
    """Each per-video item in [0, 1], arrays of length N."""
    parsed = parsed if parsed is not None else parse_batch(videos, spec)
    out = {k: [] for k in PER_VIDEO_ITEMS}
    for video, cond, p in zip(videos, conds, parsed):
        out["colour"].append(float(p.colour == cond.colour))
        out["shape"].append(float(p.shape == cond.shape))
        out["direction"].append(float(p.direction == cond.direction))
        out["count"].append(p.single_object_share)
        out["trajectory"].append(_trajectory_score(p.trajectory))
        out["identity"].append(_identity(p.areas))
        out["flicker"].append(_flicker(video, p.background_rgb))
        out["jerk"].append(_jerk_score(p.trajectory))
        out["dynamic"].append(float(p.speed > DYNAMIC_PX_PER_FRAME))
    return {k: np.asarray(v) for k, v in out.items()}


def space_time_patches(videos: np.ndarray, num: int, rng: np.random.Generator, size=(3, 8, 8)) -> np.ndarray:
    """`num` random [t, h, w, 3] patches, flattened: [num, t·h·w·3]."""
    n, f, h, w, _ = videos.shape
    t, ph, pw = size
    i = rng.integers(0, n, num)
    a = rng.integers(0, f - t + 1, num)
    y = rng.integers(0, h - ph + 1, num)
    x = rng.integers(0, w - pw + 1, num)
    return np.stack([videos[i_, a_:a_ + t, y_:y_ + ph, x_:x_ + pw].reshape(-1)
                     for i_, a_, y_, x_ in zip(i, a, y, x)]).astype(np.float64)


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, num_directions: int = 256) -> float:
    """SWD = mean over random unit directions θ of the 1-D W1 between sorted projections
    (equal sample counts; features standardised with the pooled mean/std)."""
    pooled = np.concatenate([x, y])
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    x, y = (x - mu) / sd, (y - mu) / sd
    theta = rng.standard_normal((x.shape[1], num_directions))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)
    return float(np.abs(px - py).mean())


@dataclass(frozen=True)
class RealReference:
    """Fresh real videos for the prompts, and the real-vs-real SWD floor (mean, std over independent draws)."""

    videos: np.ndarray
    floor: float
    floor_std: float

    @property
    def tolerance(self) -> float:
        """SWD differences below floor + 2·std are indistinguishable from real-vs-real variation."""
        return self.floor + 2 * self.floor_std


def _fresh_draw(conds: list[toyworld.Condition], spec: toyworld.WorldSpec, seed: int) -> np.ndarray:
    """The same attributes as `conds` with new random start positions."""
    return toyworld.render_batch(toyworld.with_fresh_starts(conds, seed, spec), spec)


def real_reference(conds: list[toyworld.Condition], spec: toyworld.WorldSpec, seed: int,
                   num_draws: int = 4, num_patches: int = 4096) -> RealReference:
    """A real reference set for `conds` plus `num_draws` more real sets; their SWDs to it give the floor."""
    rng = np.random.default_rng(seed)
    reference = _fresh_draw(conds, spec, seed + 1000)
    ref_patches = space_time_patches(reference, num_patches, rng)
    swds = [sliced_wasserstein(space_time_patches(_fresh_draw(conds, spec, seed + 1001 + k), num_patches, rng),
                               ref_patches, rng) for k in range(num_draws)]
    return RealReference(videos=reference, floor=float(np.mean(swds)), floor_std=float(np.std(swds)))


def distribution_score(videos: np.ndarray, real: RealReference, seed: int, num_patches: int = 4096) -> tuple[float, float]:
    """(SWD to the real reference, score in [0, 1]): 1 within real-vs-real variation, then
    exp(−(SWD − tolerance) / floor)."""
    rng = np.random.default_rng(seed)
    swd = sliced_wasserstein(space_time_patches(videos, num_patches, rng),
                             space_time_patches(real.videos, num_patches, rng), rng)
    return swd, float(np.exp(-max(0.0, swd - real.tolerance) / max(real.floor, 1e-9)))


def sharpness(videos: np.ndarray) -> float:
    """Mean spatial gradient magnitude |∇v| (blur lowers it, noise and ringing raise it)."""
    gy, gx = np.diff(videos, axis=2)[:, :, :, :-1], np.diff(videos, axis=3)[:, :, :-1]
    return float(np.sqrt(gy ** 2 + gx ** 2).mean())


def seam_contrast(videos: np.ndarray, patch: int) -> float:
    """Mean |Δv| between neighbouring pixels on either side of a `patch`-pixel seam ÷ mean |Δv| between
    neighbours inside a patch (both spatial axes; videos [B, F, H, W, 3])."""
    seam, inside = [], []
    for axis in (2, 3):
        d = np.abs(np.diff(videos, axis=axis))
        on_seam = np.arange(d.shape[axis]) % patch == patch - 1
        seam.append(np.compress(on_seam, d, axis=axis).mean())
        inside.append(np.compress(~on_seam, d, axis=axis).mean())
    return float(np.mean(seam) / max(np.mean(inside), 1e-12))


def seam_ratio(videos: np.ndarray, real: RealReference, patch: int) -> float:
    """Seam contrast relative to the real reference's (1: as real, > 1: blocking)."""
    return seam_contrast(videos, patch) / max(seam_contrast(real.videos, patch), 1e-12)


def sharpness_score(videos: np.ndarray, real: RealReference) -> tuple[float, float]:
    """(ratio generated ÷ real, score max(0, 1 − |log ratio|))."""
    ratio = sharpness(videos) / max(sharpness(real.videos), 1e-12)
    return ratio, float(max(0.0, 1 - abs(np.log(max(ratio, 1e-12)))))


def aggregate(items: dict[str, float]) -> dict[str, float]:
    """Quality, Semantic, Total from item means (all in [0, 1])."""
    quality = sum(w * items[k] for k, w in QUALITY_WEIGHTS.items()) / sum(QUALITY_WEIGHTS.values())
    semantic = float(np.mean([items[k] for k in SEMANTIC_ITEMS]))
    return {"quality": quality, "semantic": semantic, "total": (4 * quality + semantic) / 5}


def per_video_total(scores: dict[str, np.ndarray], set_items: dict[str, float]) -> np.ndarray:
    """Total for each video, with the set-level items (distribution, sharpness) held fixed (for bootstrapping)."""
    items = {**scores, **{k: np.full(len(scores["colour"]), v) for k, v in set_items.items()}}
    quality = sum(w * items[k] for k, w in QUALITY_WEIGHTS.items()) / sum(QUALITY_WEIGHTS.values())
    semantic = np.mean([items[k] for k in SEMANTIC_ITEMS], axis=0)
    return (4 * quality + semantic) / 5


def fidelity(latents: np.ndarray, ref_latents: np.ndarray, videos: np.ndarray, ref_videos: np.ndarray) -> dict[str, float]:
    """Relative latent error to the teacher reference from the same noise, and pixel PSNR (dB)."""
    err = float(np.mean((latents - ref_latents) ** 2) / max(np.mean((ref_latents - ref_latents.mean(0)) ** 2), 1e-12))
    mse = float(np.mean((videos - ref_videos) ** 2))
    return {"latent_rel_error": err, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def score(videos: np.ndarray, conds: list[toyworld.Condition], spec: toyworld.WorldSpec, real: RealReference,
          seed: int = 0, patch: int | None = None) -> tuple[dict[str, float], np.ndarray]:
    """All ToyBench numbers for one video set: (metrics, per-video Total). `patch`: the VAE's spatial patch
    size, for the seam diagnostic."""
    per_video = per_video_scores(videos, conds, spec)
    swd, dist = distribution_score(videos, real, seed)
    ratio, sharp = sharpness_score(videos, real)
    set_items = {"distribution": dist, "sharpness": sharp}
    items = {**{k: float(v.mean()) for k, v in per_video.items()}, **set_items}
    metrics = {**items, **aggregate(items), "swd": swd, "swd_floor": real.floor, "swd_floor_std": real.floor_std,
               "sharpness_ratio": ratio}
    if patch is not None:
        metrics["seam_ratio"] = seam_ratio(videos, real, patch)
    return metrics, per_video_total(per_video, set_items)
