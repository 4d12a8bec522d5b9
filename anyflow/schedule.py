"""Noise-level schedules shared by every stage.

Time shift (recipe §1.1, AnyFlow/SD3): σ' = s·σ / (1 + (s − 1)·σ). It keeps 0 and 1 fixed, is monotone in
σ for s > 0, and s > 1 moves mass towards high noise (σ → 1).
"""

from __future__ import annotations

import torch


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ) (recipe §1.1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)
