"""The flow map and its samplers, in σ units on channel-major latents [B, C, F, H, W].

A flow map Φ(z_t, t, r) transports a point of the probability-flow ODE dz/dσ = v(z, σ) from σ = t to σ = r.
AnyFlow parameterises it by an average velocity u (recipe §1.1, MeanFlow):

    Φ(z_t, t, r) = z_t − (t − r)·u(z_t, t, r),      u(z_t, t, t) = v(z_t, t)            (flow-map step)

so r = t is the identity map and u at r = t is the instantaneous velocity (flow matching). N-step sampling
walks the shifted grid σ_0 = 1 > … > σ_N = 0 (recipe §2, §8.1): one network call per step, NFE = N.
The teacher baseline is the same walk with u := CFG-combined velocity (Euler), NFE = 2N with CFG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from anyflow.schedule import time_grid

# u(z_t, t, r) with z_t [B, C, F, H, W] and t, r [B] in σ units → [B, C, F, H, W]
AverageVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# v(z_t, t) → [B, C, F, H, W]
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(s, device=like.device)
    return s.reshape(s.shape + (1,) * (like.ndim - s.ndim)) if s.ndim else s


def flowmap_step(z_t: torch.Tensor, u: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """z_r = z_t − (t − r)·u  (recipe §1.1, the flow-map step; Euler when u = v(z_t, t)). t, r: scalars or [B]."""
    return z_t - (_bcast(t, z_t) - _bcast(r, z_t)).to(z_t.dtype) * u


def x0_estimate(z_t: torch.Tensor, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x̂₀ = z_t − t·u(z_t, t, 0): the one-jump data estimate (recipe §1.1)."""
    return flowmap_step(z_t, u, t, torch.zeros_like(torch.as_tensor(t)))


def classifier_free_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """v = v_∅ + w·(v_c − v_∅) (standard convention: w = 1 is the conditional model; recipe P2)."""
    return v_uncond + scale * (v_cond - v_uncond)


@torch.no_grad()
def sample_flow_map(u_fn: AverageVelocityFn, noise: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """Any-NFE sampling: z_{σ_{i+1}} = z_{σ_i} − (σ_i − σ_{i+1})·u(z, σ_i, σ_{i+1}) over `time_grid(N, shift)`.

    Equals `AnyFlowPipeline` / `FlowMapEulerDiscreteScheduler` stepping (recipe §8.1) on the same model.
    """
    grid = time_grid(num_steps, shift).tolist()
    z = noise
    batch = noise.shape[0]
    for t, r in zip(grid[:-1], grid[1:]):
        t_b = torch.full((batch,), t, dtype=torch.float32, device=noise.device)
        r_b = torch.full((batch,), r, dtype=torch.float32, device=noise.device)
        z = flowmap_step(z, u_fn(z, t_b, r_b), t_b, r_b)
    return z


def sample_euler(v_fn: VelocityFn, noise: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """The teacher's N-step Euler sampler on the same shifted grid (u := v(z, t), r ignored)."""
    return sample_flow_map(lambda z, t, r: v_fn(z, t), noise, num_steps, shift)


@torch.no_grad()
def jump_errors(u_fn: AverageVelocityFn, v_fn: VelocityFn, noise: torch.Tensor, num_steps: int, shift: float,
                substeps: int = 64) -> list[dict[str, float]]:
    """How exact a flow map is on the N-step grid, interval by interval, along the ODE dz/dσ = v (evaluation.md
    §2.2 A, ODE faithfulness, per jump). From z_{σ_i} on v's own trajectory, the true average velocity is

        ū_i = (z_{σ_i} − Φ_v(z_{σ_i}, σ_i, σ_{i+1})) / (σ_i − σ_{i+1}),   Φ_v: `substeps` Euler steps of v,

    and each row holds the relative errors mean‖a − ū_i‖² / mean‖ū_i‖² of a = u(z, σ_i, σ_{i+1}) (the flow-map
    jump), u(z, σ_i, σ_i) (Euler on the map's own velocity) and v(z, σ_i) (Euler on v). An exact flow map of v
    scores 0 at every interval while Euler does not; a map no better than Euler has not learned its jumps."""
    grid = time_grid(num_steps, shift).tolist()
    full = lambda s: torch.full((noise.shape[0],), s, dtype=torch.float32, device=noise.device)
    rel = lambda a, b: float(((a - b) ** 2).mean() / (b ** 2).mean().clamp_min(1e-20))
    z, rows = noise, []
    for t, r in zip(grid[:-1], grid[1:]):
        z_r = z
        sub = torch.linspace(t, r, substeps + 1).tolist()
        for a, b in zip(sub[:-1], sub[1:]):
            z_r = flowmap_step(z_r, v_fn(z_r, full(a)), full(a), full(b))
        u_true = (z - z_r) / (t - r)
        rows.append({"t": t, "r": r, "flow_map": rel(u_fn(z, full(t), full(r)), u_true),
                     "own_velocity_euler": rel(u_fn(z, full(t), full(t)), u_true),
                     "euler": rel(v_fn(z, full(t)), u_true)})
        z = z_r
    return rows
