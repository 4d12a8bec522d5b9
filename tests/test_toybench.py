"""ToyBench sanity: real videos score at the top, noise / blank / static / blurred videos lose on the
metrics that should catch them, and the continuous metrics do not sit at a bound on real data."""

import numpy as np
import pytest

from anyflow import toyworld
from anyflow.toybench import aggregate, fidelity, real_reference, score, seam_contrast

SPEC = toyworld.WorldSpec()


def _blur(videos: np.ndarray) -> np.ndarray:
    """A 5-point spatial box blur."""
    return (videos + np.roll(videos, 1, 2) + np.roll(videos, -1, 2) + np.roll(videos, 1, 3) + np.roll(videos, -1, 3)) / 5


@pytest.fixture(scope="module")
def world():
    conds = toyworld.sample_conditions(48, 5, "base", SPEC)
    return conds, toyworld.render_batch(conds, SPEC), real_reference(conds, SPEC, seed=0)


def test_real_videos_score_at_the_top(world):
    conds, videos, real = world
    m, per_video = score(videos, conds, SPEC, real)
    assert m["total"] > 0.97 and per_video.shape == (48,)
    for k in ("colour", "shape", "direction", "count", "dynamic"):
        assert m[k] == 1.0, k
    assert 0 < m["swd"] <= real.tolerance and 0.9 < m["sharpness_ratio"] < 1.1   # continuous, not at a bound
    assert real.floor > 0 and real.floor_std >= 0


def test_noise_blank_static_and_blur_lose_where_they_should(world):
    conds, videos, real = world
    rng = np.random.default_rng(0)
    real_total = score(videos, conds, SPEC, real)[0]["total"]
    noise = score(rng.random(videos.shape).astype(np.float32), conds, SPEC, real)[0]
    assert noise["total"] < 0.6 and noise["distribution"] < 0.05 and noise["sharpness_ratio"] > 5
    blank = score(np.broadcast_to(np.float32([0.45] * 3), videos.shape).copy(), conds, SPEC, real)[0]
    assert blank["count"] == 0 and blank["semantic"] == 0 and blank["dynamic"] == 0 and blank["total"] < 0.3
    static = score(np.repeat(videos[:, :1], videos.shape[1], axis=1), conds, SPEC, real)[0]
    assert static["dynamic"] == 0 and static["direction"] == 0 and static["total"] < real_total - 0.1
    blurred = _blur(videos)
    b = score(blurred, conds, SPEC, real)[0]
    assert b["sharpness_ratio"] < 0.97 and b["total"] < real_total


def test_aggregate_weights():
    ones = {k: 1.0 for k in ("count", "colour", "shape", "direction", "trajectory", "identity", "flicker",
                             "jerk", "dynamic", "distribution", "sharpness")}
    assert aggregate(ones) == {"quality": 1.0, "semantic": 1.0, "total": 1.0}
    half_dyn = aggregate({**ones, "dynamic": 0.0})
    assert half_dyn["quality"] == pytest.approx(5 / 5.5) and half_dyn["total"] == pytest.approx((4 * 5 / 5.5 + 1) / 5)


def test_fidelity_to_the_reference():
    rng = np.random.default_rng(1)
    lat, vid = rng.standard_normal((4, 16, 2, 4, 4)), rng.random((4, 3, 8, 8, 3))
    same = fidelity(lat, lat, vid, vid)
    assert same["latent_rel_error"] == 0 and same["psnr"] > 100
    off = fidelity(lat + 0.1, lat, vid * 0.9, vid)
    assert 0 < off["latent_rel_error"] < 0.1 and 15 < off["psnr"] < 40


def test_seam_ratio_catches_blocking_and_not_blur(world):
    """Blocking (an offset per 4x4 patch, what a patch decoder makes of off-manifold latents) raises the seam
    ratio; real videos sit at 1 and blur does not raise it."""
    conds, videos, real = world
    assert "seam_ratio" not in score(videos, conds, SPEC, real)[0]
    assert score(videos, conds, SPEC, real, patch=4)[0]["seam_ratio"] == pytest.approx(1.0, abs=0.1)
    rng = np.random.default_rng(2)
    b, f, h, w, _ = videos.shape
    offsets = np.repeat(np.repeat(rng.normal(0, 0.03, (b, f, h // 4, w // 4, 1)), 4, 2), 4, 3).astype(np.float32)
    blocky = np.clip(videos + offsets, 0, 1)
    assert score(blocky, conds, SPEC, real, patch=4)[0]["seam_ratio"] > 1.5
    blurred = _blur(videos)
    assert score(blurred, conds, SPEC, real, patch=4)[0]["seam_ratio"] < 1.1
    # the seam grid is the patch grid: the same offsets seen with the wrong patch size read much weaker
    assert seam_contrast(blocky, 4) > seam_contrast(blocky, 3)
