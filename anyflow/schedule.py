"""Noise-level schedules shared by every stage, in σ units (σ ∈ [0, 1]; the networks take t = 1000·σ).

- Time shift (recipe §1.1): σ' = s·σ / (1 + (s − 1)·σ). Keeps 0 and 1, monotone for s > 0, s > 1 moves mass
  towards high noise.
- The N-step grid (recipe §2, `set_timesteps`): σ_i = shift_s(1 − i/N), i = 0..N, so N + 1 points from 1 to 0.
- The time weight (recipe §2 `beta08`, §6.5): w(σ) ∝ σ·(1 − σ)^½, the Beta(2, 1.5) kernel on the shifted σ,
  normalised so that its mean over the 1001-point shifted grid is 1.
- The (t, r) sampler (recipe §6.2): a₁, a₂ ~ U(0, 1), t = max, r = min, then a fixed split of the batch into
  diffusion (r = t), consistency (r = 0) and general (r < t) samples, both times shifted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000   # network timesteps are t = 1000·σ


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ) (recipe §1.1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def time_grid(num_steps: int, shift: float) -> torch.Tensor:
    """The N-step grid σ_0 = 1 > σ_1 > … > σ_N = 0 (N + 1 points, float64; recipe §2)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def beta_time_weight(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """w(σ) = σ(1 − σ)^½ / Z: the Beta(2, 1.5) kernel on shifted σ (recipe §2 `beta08`, §6.5).

    Z makes the mean of w over the 1001-point grid `time_grid(1000, shift)` equal to 1, the reference's
    normalisation (Σ_grid w = 1000). Evaluated exactly at σ rather than at the nearest grid point.
    """
    grid = time_grid(1000, shift)
    z = (grid * (1 - grid).sqrt()).mean()
    s = sigma.to(torch.float64).clamp(0, 1)
    return (s * (1 - s).sqrt() / z).to(sigma.dtype if sigma.is_floating_point() else torch.float32)


@dataclass(frozen=True)
class TimePairs:
    """A batch of flow-map time pairs in σ units: t ≥ r, and the mask of diffusion (r = t) samples."""

    t: torch.Tensor              # (B,)
    r: torch.Tensor              # (B,)
    is_diffusion: torch.Tensor   # (B,) bool


def split_counts(batch_size: int, diffusion_ratio: float, consistency_ratio: float) -> tuple[int, int, int]:
    """(diffusion, consistency, general) counts of a batch (recipe §6.2), with at least one diffusion sample.

    The reference rounds with Python's banker's rounding and can produce zero diffusion samples, which
    makes the adaptive weight's denominator the mean of an empty set (recipe P3); we guarantee one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not (0 <= diffusion_ratio <= 1 and 0 <= consistency_ratio <= 1 and diffusion_ratio + consistency_ratio <= 1):
        raise ValueError(f"bad (t, r) split: diffusion {diffusion_ratio}, consistency {consistency_ratio}")
    n_diff = max(1, round(diffusion_ratio * batch_size))
    n_cons = min(batch_size - n_diff, round(consistency_ratio * batch_size))
    return n_diff, n_cons, batch_size - n_diff - n_cons


def sample_time_pairs(
    batch_size: int, diffusion_ratio: float, consistency_ratio: float, shift: float, generator: torch.Generator
) -> TimePairs:
    """Draw (t, r) per recipe §6.2: uniform pair sorted so t ≥ r, the batch split into r = t / r = 0 / r < t
    (first, next, rest, as the reference assigns by index), then both shifted. Float32, not the reference's bf16 (P1)."""
    n_diff, n_cons, _ = split_counts(batch_size, diffusion_ratio, consistency_ratio)
    a = torch.rand(2, batch_size, generator=generator)
    t, r = a.max(dim=0).values, a.min(dim=0).values
    is_diffusion = torch.arange(batch_size) < n_diff
    r = torch.where(is_diffusion, t, r)
    r[n_diff:n_diff + n_cons] = 0.0
    return TimePairs(t=shift_sigma(t, shift), r=shift_sigma(r, shift), is_diffusion=is_diffusion)
