"""Stage 2 building blocks: flow-map backward simulation, the DMD generator gradient, the critic loss
(recipe §7; AnyFlow's on-policy distillation).

Flow-map backward simulation (§7.2): draw a budget s and a step k ∈ [0, s) on the shifted s-step grid
σ_0 = 1 > … > σ_s = 0, then reach the sampled step with flow-map jumps instead of k Euler steps:

    z_{σ_k}     = Φ_θ(z_1, 1, σ_k)            (skipped when k = 0)
    z_{σ_{k+1}} = Φ_θ(z_{σ_k}, σ_k, σ_{k+1})  (the trained grid step)
    x̂₀          = Φ_θ(z_{σ_{k+1}}, σ_{k+1}, 0)  (skipped when k = s − 1)

with Φ_θ(z, t, r) = z − (t − r)·u_θ(z, t, r): 2 or 3 network calls whatever s is. The reference keeps every
jump on the autograd tape (P6); `grad_through_prefix=False` detaches the first jump (cheaper, a deviation).

DMD (§7.3): τ = shift_s(U(0, 1)), z_τ = (1 − τ)·x̂₀ + τ·ε', x-predictions x = z_τ − τ·v of the critic (fake)
and of the teacher with CFG in the standard convention x_real = x_∅ + w·(x_c − x_∅) (the research code's
"3.0" is w = 4 here, P2); grad = (x_fake − x_real) / mean|x̂₀ − x_real| per sample; the generator loss is
MSE(x̂₀, sg(x̂₀ − grad)), whose gradient w.r.t. x̂₀ is proportional to grad.

Critic (§7.5): flow matching on the generator's no-grad rollouts, logit-normal times with the shift.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from anyflow.flowmap import AverageVelocityFn, VelocityFn, flowmap_step
from anyflow.gradckpt import enable_gradient_checkpointing
from anyflow.lora import LoraSpec, attach_lora, load_lora, lora_parameters, save_lora
from anyflow.schedule import shift_sigma, time_grid
from anyflow.shards import open_shards
from anyflow.stage1 import FlowMapLossSpec, flowmap_loss, loss_target
from anyflow.student import average_velocity, student_from_teacher
from anyflow.teacher import teacher_velocity
from anyflow.training import LogFn, LoopSpec, Update, train_updates
from anyflow.wan import Teacher


def draw_budget(budgets: tuple[int, ...], generator: torch.Generator) -> tuple[int, int]:
    """(s, k): a simulated step budget from `budgets` and the trained step k ∈ [0, s), uniformly."""
    s = budgets[int(torch.randint(len(budgets), (1,), generator=generator))]
    return s, int(torch.randint(s, (1,), generator=generator))


def backward_simulation(u_fn: AverageVelocityFn, noise: torch.Tensor, s: int, k: int, shift: float,
                        grad_through_prefix: bool = True) -> tuple[torch.Tensor, int]:
    """x̂₀ from noise z_1 [B, C, F, H, W] by the three flow-map transitions above; returns (x̂₀, network calls)."""
    if not 0 <= k < s:
        raise ValueError(f"need 0 <= k < s, got k={k}, s={s}")
    grid = time_grid(s, shift).tolist()
    b = noise.shape[0]
    full = lambda v: torch.full((b,), v, dtype=torch.float32, device=noise.device)
    z, calls = noise, 0
    for t, r, skip in ((grid[0], grid[k], k == 0), (grid[k], grid[k + 1], False), (grid[k + 1], 0.0, k == s - 1)):
        if skip:
            continue
        z = flowmap_step(z, u_fn(z, full(t), full(r)), full(t), full(r))
        calls += 1
        if calls == 1 and k > 0 and not grad_through_prefix:
            z = z.detach()
    return z, calls


def x0_from_velocity(z_tau: torch.Tensor, tau: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x = z_τ − τ·v (the data prediction of a velocity at time τ)."""
    return z_tau - tau.view(-1, *([1] * (z_tau.ndim - 1))) * v


@torch.no_grad()
def dmd_gradient(x0_hat: torch.Tensor, real_cond: VelocityFn, real_uncond: VelocityFn, fake: VelocityFn,
                 real_guidance_scale: float, shift: float, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The DMD direction (x_fake − x_real) / mean|x̂₀ − x_real| per sample, at a random re-noising τ."""
    b = x0_hat.shape[0]
    tau = shift_sigma(torch.rand(b, generator=generator), shift).to(x0_hat.device)
    eps = torch.randn(x0_hat.shape, generator=generator).to(x0_hat.device, x0_hat.dtype)
    tb = tau.view(-1, *([1] * (x0_hat.ndim - 1)))
    z = (1 - tb) * x0_hat.detach() + tb * eps
    x_fake = x0_from_velocity(z, tau, fake(z, tau))
    x_c = x0_from_velocity(z, tau, real_cond(z, tau))
    x_u = x0_from_velocity(z, tau, real_uncond(z, tau)) if real_guidance_scale != 1 else x_c
    x_real = x_u + real_guidance_scale * (x_c - x_u)
    norm = (x0_hat.detach() - x_real).abs().flatten(1).mean(dim=1).clamp_min(1e-8)
    grad = torch.nan_to_num((x_fake - x_real) / norm.view(-1, *([1] * (x0_hat.ndim - 1))))
    return grad, {"dmd_tau": float(tau.mean()), "dmd_grad_norm": float(grad.flatten(1).norm(dim=1).mean())}


def dmd_loss(x0_hat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """MSE(x̂₀, sg(x̂₀ − grad)) in float64 (recipe §7.3, P18): its gradient is 2·grad / numel."""
    target = (x0_hat - grad).detach().double()
    return torch.nn.functional.mse_loss(x0_hat.double(), target)


def critic_loss(critic_v: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0_hat: torch.Tensor, shift: float,
                generator: torch.Generator) -> torch.Tensor:
    """Flow matching of the critic on (detached) generator samples: τ = shift_s(sigmoid(N(0, 1)))."""
    x0 = x0_hat.detach()
    b = x0.shape[0]
    tau = shift_sigma(torch.sigmoid(torch.randn(b, generator=generator)), shift).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    tb = tau.view(-1, *([1] * (x0.ndim - 1)))
    v = critic_v((1 - tb) * x0 + tb * eps, tau)
    return ((v.float() - (eps - x0).float()) ** 2).mean()


@dataclass(frozen=True, kw_only=True)
class Stage2Spec:
    rollout_budgets: tuple[int, ...] = (2, 4, 8, 16, 50)
    real_guidance_scale: float = 4.0       # standard convention (the research code's "3.0")
    dmd_weight: float = 1.0
    flowmap_weight: float = 1.0            # the stage-1 loss on data, added to the generator loss
    generator_every: int = 1               # critic updates per generator update
    grad_through_prefix: bool = True       # reference behaviour (P6): gradients through every jump
    shift: float = 3.0


def _shared_budget(budgets: tuple[int, ...], generator: torch.Generator) -> tuple[int, int]:
    """(s, k) drawn on rank 0 and broadcast: they change the number of forward passes (recipe P7)."""
    s, k = draw_budget(budgets, generator)
    if dist.is_available() and dist.is_initialized():
        box = torch.tensor([s, k])
        dist.broadcast(box, src=0)
        s, k = int(box[0]), int(box[1])
    return s, k


def train_stage2(teacher: Teacher, student_lora: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                 critic_lora: LoraSpec, loss: FlowMapLossSpec, spec: Stage2Spec, loop: LoopSpec, generator_lr: float,
                 critic_lr: float, betas: tuple[float, float], batch_size: int, gate_value: float,
                 log: LogFn = lambda m, s: None, progress: bool = True, gradient_checkpointing: bool = False,
                 real_transformer: torch.nn.Module | None = None,
                 preview: Callable[[int, torch.nn.Module], None] | None = None,
                 preview_every: int = 0, probe: Callable[[int, torch.nn.Module], None] | None = None,
                 probe_every: int = 0) -> tuple[torch.nn.Module, dict]:
    """Stage 2 end to end (recipe §7.7): the generator (stage-1 student, its LoRA continued) trained by DMD on
    flow-map backward simulations plus the stage-1 loss on data; the critic (teacher copy + its own LoRA)
    by flow matching on no-grad rollouts; one batch per update. Writes `out_dir/lora.safetensors`.
    `real_transformer` (e.g. the stage-0 tuned teacher) replaces the teacher as real score and critic init;
    the student is always built from the teacher it was trained from in stage 1. `preview(step, student)` runs
    every `preview_every` steps and at the end, on the generator's current (not EMA) weights; `probe(step,
    student)` likewise every `probe_every` steps, on its EMA weights (what the stage exports). Neither changes
    what the stage trains."""
    out_dir = Path(out_dir)
    student = student_from_teacher(teacher.transformer, gate_value)
    lora_spec = load_lora(student, student_lora)
    gen_params = lora_parameters(student)
    student.requires_grad_(False)
    for p in gen_params:
        p.requires_grad_(True)
    real = (real_transformer if real_transformer is not None else teacher.transformer).eval().requires_grad_(False)
    critic = copy.deepcopy(real)
    critic_params = attach_lora(critic, critic_lora, seed=loop.seed)
    if gradient_checkpointing:
        enable_gradient_checkpointing(student)
        enable_gradient_checkpointing(critic)
    reader = open_shards(data_dir, teacher.max_sequence_length)
    uncond = teacher.uncond_embedding()
    unc = lambda n: uncond.expand(n, -1, -1)
    target = loss_target(teacher.transformer, uncond, loss)

    def generator_step(model, batch, g):
        text = batch.prompt_embeds
        s, k = _shared_budget(spec.rollout_budgets, g)
        noise = torch.randn(batch.latents.shape, generator=g)
        x0_hat, calls = backward_simulation(lambda z, t, r: average_velocity(model, z, t, r, text), noise, s, k,
                                            spec.shift, spec.grad_through_prefix)
        grad, stats = dmd_gradient(
            x0_hat, lambda z, tau: teacher_velocity(real, z, tau, text),
            lambda z, tau: teacher_velocity(real, z, tau, unc(len(z))),
            lambda z, tau: teacher_velocity(critic, z, tau, text), spec.real_guidance_scale, spec.shift, g)
        l_dmd = spec.dmd_weight * dmd_loss(x0_hat, grad).float()
        l_fm, parts = flowmap_loss(model, batch.latents, text, uncond, loss, g, target_velocity=target)
        return l_dmd + spec.flowmap_weight * l_fm, {"dmd_loss": float(l_dmd.detach()), "flowmap_loss": float(l_fm.detach()),
                                                    "s": s, "k": k, "rollout_calls": calls, **stats, **parts}

    def critic_step(model, batch, g):
        text = batch.prompt_embeds
        s, k = _shared_budget(spec.rollout_budgets, g)
        with torch.no_grad():
            x0_hat, _ = backward_simulation(lambda z, t, r: average_velocity(student, z, t, r, text),
                                            torch.randn(batch.latents.shape, generator=g), s, k, spec.shift)
        return critic_loss(lambda z, tau: teacher_velocity(model, z, tau, text), x0_hat, spec.shift, g), {}

    updates = [Update("stage2", student, gen_params, generator_step, lr=generator_lr, betas=betas,
                      grad_clip=loop.grad_clip, every=spec.generator_every, ema=True),
               Update("critic", critic, critic_params, critic_step, lr=critic_lr, betas=betas, grad_clip=loop.grad_clip)]

    def due(fn, every: int, done: int) -> bool:
        return fn is not None and every > 0 and (done % every == 0 or done == loop.num_steps)

    def look(fn, done: int) -> None:
        was_training = student.training
        student.eval()
        with torch.no_grad():
            fn(done, student)
        student.train(was_training)

    def after_step(done: int, ema_weights) -> None:
        if due(preview, preview_every, done):
            look(preview, done)
        if due(probe, probe_every, done):
            with ema_weights():
                look(probe, done)

    summary = train_updates(updates, lambda pos: reader.batches(batch_size, seed=loop.seed, start=pos), loop,
                            out_dir / "checkpoints", log=log, progress=progress, after_step=after_step)
    save_lora(student, out_dir / "lora.safetensors", lora_spec)
    return student, summary
