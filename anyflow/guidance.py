"""Classifier-free guidance of a Wan transformer's velocity: both branches in one batched call (recipe P2).

Kept out of anyflow/teacher.py on purpose: that file is part of the prebuilt toy teacher's code version."""

from __future__ import annotations

import torch

from anyflow.teacher import teacher_velocity


def cond_uncond_velocity(model, z_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                         uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_c, v_∅) of `model` at (z_t [B, C, F, H, W], σ [B]) for `text` [B, S, D] and `uncond` [1, S, D]."""
    n = z_t.shape[0]
    both = teacher_velocity(model, torch.cat([z_t, z_t]), torch.cat([sigma, sigma]),
                            torch.cat([text, uncond.expand(n, -1, -1).to(text.dtype)]))
    return both[:n], both[n:]
