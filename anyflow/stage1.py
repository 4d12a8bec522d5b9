"""Stage 1: forward flow-map training (recipe §6; AnyFlow "flow map training", MeanFlow identity).

The student u_θ(z_t, t, r) learns the average velocity of its own probability-flow ODE from data pairs:

    z_t = (1 − t)·x₀ + t·ε,   v = ε − x₀                                            (§1.1)
    P   = (u_θ(z_t, t, r, c) − (1 − g)·sg[u_θ(z_t, t, r, ∅)]) / g                    (§6.3, guidance fused)
    du/dt ≈ sg[u_θ(z_t + δv, t + δ, r, c) − u_θ(z_t − δv, t − δ, r, c)] / (2δ·g)     (§6.4, central difference
                                                                                     along the tangent (v, 1, 0))
    U   = v − (t − r)·du/dt                                                          (MeanFlow identity)
    L_i = w(t_i)·mean((P_i − U_i)²),   w = Beta(2, 1.5) kernel on shifted t          (§6.5)
    L_i ← L_i · sg[D / (L_i + c)] for r ≠ t,  D = mean of L over the r = t samples   (adaptive reweighting)

At r = t the derivative term vanishes, U = v, and the loss is flow matching. Deliberate differences from
the research code: times are fp32 (the reference draws them in bf16, which shrinks the finite-difference
span by 20% at t ≥ 0.512, recipe P1); the two finite-difference forwards are skipped for r = t samples,
whose derivative is multiplied by 0 anyway; the unconditional forward is skipped for text-dropped rows, whose
conditional forward already is it; the r = t / r = 0 / general split is made per process (each
process holds the same mix, at least one r = t sample), not by global index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from anyflow.flowmap import classifier_free_guidance
from anyflow.gradckpt import enable_gradient_checkpointing
from anyflow.guidance import cond_uncond_velocity
from anyflow.lora import LoraSpec, attach_lora, save_lora
from anyflow.schedule import beta_time_weight, sample_time_pairs
from anyflow.shards import open_shards
from anyflow.student import average_velocity, student_from_teacher
from anyflow.teacher import teacher_velocity
from anyflow.training import LogFn, LoopSpec, train


@dataclass(frozen=True, kw_only=True)
class FlowMapLossSpec:
    diffusion_ratio: float = 0.5       # r = t
    consistency_ratio: float = 0.25    # r = 0
    fused_guidance_scale: float = 3.0  # g; 1 disables fusion
    fd_delta: float = 0.005            # δ, in σ units (the reference's ε = 5 timestep units)
    adaptive_c: float = 1e-5
    shift: float = 3.0
    text_dropout: float = 0.1
    velocity_target: str = "data"      # "data": v = ε − x₀ (the recipe); "teacher": the teacher's CFG velocity
    target_guidance_scale: float = 1.0  # w of the teacher target (the synthesis guidance)

    def __post_init__(self):
        if self.velocity_target not in ("data", "teacher"):
            raise ValueError(f"velocity_target must be 'data' or 'teacher', got {self.velocity_target!r}")
        if self.fused_guidance_scale < 1:
            raise ValueError(f"fused_guidance_scale must be >= 1, got {self.fused_guidance_scale}")
        if self.fd_delta <= 0:
            raise ValueError(f"fd_delta must be > 0, got {self.fd_delta}")


# v(z_t, t, text [B, S, D], dropped [B] bool) → [B, C, F, H, W]: a stage-1 target velocity other than ε − x₀
TargetVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_teacher_target(transformer, uncond: torch.Tensor, guidance_scale: float) -> TargetVelocityFn:
    """The teacher's CFG velocity v_∅ + w·(v_c − v_∅) on kept rows, its unguided v_∅ on text-dropped rows
    (whose `text` already is ∅): the velocity of the ODE the synthesized data were drawn from."""
    def fn(z, t, text, dropped):
        if guidance_scale == 1:
            return teacher_velocity(transformer, z, t, text)
        v_c, v_u = cond_uncond_velocity(transformer, z, t, text, uncond)
        return torch.where(_bc(dropped, z), v_u, classifier_free_guidance(v_c, v_u, guidance_scale))
    return fn


def loss_target(transformer, uncond: torch.Tensor, spec: FlowMapLossSpec) -> TargetVelocityFn | None:
    """The target velocity `spec.velocity_target` asks for: None (ε − x₀) or the frozen teacher's."""
    if spec.velocity_target == "data":
        return None
    transformer.requires_grad_(False)
    return guided_teacher_target(transformer, uncond, spec.target_guidance_scale)


def _bc(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.view(-1, *([1] * (like.ndim - 1)))


def adaptive_weights(losses: torch.Tensor, is_diffusion: torch.Tensor, c: float,
                     gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> torch.Tensor:
    """Stop-grad factors s_i = D / (L_i + c) for r ≠ t samples (1 for r = t), D = mean of the r = t losses
    over every process (`gather` concatenates across processes)."""
    with torch.no_grad():
        all_l, all_d = gather(losses.detach()), gather(is_diffusion)
        if not all_d.any():
            raise ValueError("adaptive reweighting needs at least one r = t sample in the global batch")
        d = all_l[all_d].mean()
        return torch.where(is_diffusion, torch.ones_like(losses), d / (losses.detach() + c))


def flowmap_loss(model, x0: torch.Tensor, text: torch.Tensor, uncond: torch.Tensor, spec: FlowMapLossSpec,
                 generator: torch.Generator,
                 gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                 target_velocity: TargetVelocityFn | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage-1 loss on clean latents x₀ [B, C, F, H, W] with prompt embeddings [B, S, D]; `uncond` [1, S, D].

    `target_velocity(z_t, t, text, dropped)` replaces the conditional velocity v = ε − x₀ by a teacher's
    (no-grad) velocity at z_t, for the tangent and the target alike: the fixed point is then the teacher's own
    flow map, and r = t samples regress the teacher's velocity (velocity distillation) instead of ε − x₀."""
    b, device = x0.shape[0], x0.device
    pairs = sample_time_pairs(b, spec.diffusion_ratio, spec.consistency_ratio, spec.shift, generator)
    t, r, is_diff = pairs.t.to(device), pairs.r.to(device), pairs.is_diffusion.to(device)
    eps = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
    drop = (torch.rand(b, generator=generator) < spec.text_dropout).to(device)
    text = torch.where(drop.view(-1, 1, 1), uncond.to(text.dtype), text)
    z = (1 - _bc(t, x0)) * x0 + _bc(t, x0) * eps
    if target_velocity is None:
        v = eps - x0
    else:
        with torch.no_grad():
            v = target_velocity(z, t, text, drop).to(x0.dtype)
    g, delta = spec.fused_guidance_scale, spec.fd_delta

    with torch.no_grad():   # every no-grad forward in one batched call
        nd = ~is_diff
        # Rows whose text was dropped already see ∅: their u_∅ is the grad forward's own output (detached).
        keep = ~drop if g != 1 else torch.zeros_like(drop)
        zs, ts, rs, cs = [], [], [], []
        if keep.any():
            zs.append(z[keep]); ts.append(t[keep]); rs.append(r[keep])
            cs.append(uncond.expand(int(keep.sum()), -1, -1).to(text.dtype))
        if nd.any():
            zn, vn, tn, rn, cn = z[nd], v[nd], t[nd], r[nd], text[nd]
            zs += [zn + delta * vn, zn - delta * vn]; ts += [tn + delta, tn - delta]; rs += [rn, rn]; cs += [cn, cn]
        out = average_velocity(model, torch.cat(zs), torch.cat(ts), torch.cat(rs), torch.cat(cs)) if zs else None
        k = int(keep.sum())
        dudt = torch.zeros_like(x0)
        if nd.any():
            m = int(nd.sum())
            dudt[nd] = (out[k:k + m] - out[k + m:k + 2 * m]) / (2 * delta * g)
        target = v - _bc(t - r, x0) * dudt

    u = average_velocity(model, z, t, r, text)
    if g == 1:
        pred = u
    else:
        u_uncond = u.detach().clone()
        u_uncond[keep] = out[:k]
        pred = (u - (1 - g) * u_uncond) / g
    per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    weighted = beta_time_weight(t, spec.shift).float() * per_sample
    scale = adaptive_weights(weighted, is_diff, spec.adaptive_c, gather)
    loss = (weighted * scale).mean()
    cons = (r == 0) & ~is_diff
    ps = per_sample.detach()
    parts = {"loss_diffusion": float(ps[is_diff].mean()),
             "loss_consistency": float(ps[cons].mean()) if cons.any() else float("nan"),
             "loss_general": float(ps[~is_diff & ~cons].mean()) if (~is_diff & ~cons).any() else float("nan")}
    return loss, parts


def train_stage1(teacher, data_dir: str | Path, out_dir: str | Path, *, lora: LoraSpec, loss: FlowMapLossSpec,
                 loop: LoopSpec, batch_size: int, gate_value: float, log: LogFn = lambda m, s: None,
                 progress: bool = True, gradient_checkpointing: bool = False) -> tuple[torch.nn.Module, dict]:
    """Stage 1 end to end: student from the teacher, LoRA, flow-map loss on the synthesized shards, the shared
    loop (resumable from `out_dir/checkpoints`). Writes `out_dir/lora.safetensors` (EMA weights); returns
    (student with EMA LoRA weights, summary).

    Under `torchrun`/`accelerate launch` with P processes each process takes its slice of a global batch of
    P·batch_size samples (the same samples one process would see with that batch), gradients are averaged
    by DDP and the adaptive weight's r = t mean is gathered across processes. No random choice changes the
    number of forward passes in stage 1 (the split sizes are fixed), so nothing needs broadcasting."""
    out_dir = Path(out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    student = student_from_teacher(teacher.transformer, gate_value)
    params = attach_lora(student, lora, seed=loop.seed)
    if gradient_checkpointing:
        enable_gradient_checkpointing(student)
    reader = open_shards(data_dir, teacher.max_sequence_length)
    uncond = teacher.uncond_embedding()
    target = loss_target(teacher.transformer, uncond, loss)

    def gather(x: torch.Tensor) -> torch.Tensor:
        return accelerator.gather(x.to(torch.float32)).to(x.dtype) if world > 1 else x

    def step(model, batch, generator):
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return flowmap_loss(model, batch.latents[rows], batch.prompt_embeds[rows], uncond, loss, generator, gather,
                            target)

    summary = train(student, params, step,
                    lambda pos: reader.batches(batch_size * world, seed=loop.seed, start=pos),
                    loop, out_dir / "checkpoints", log=log, progress=progress, accelerator=accelerator)
    if accelerator.is_main_process:
        save_lora(student, out_dir / "lora.safetensors", lora)
    accelerator.wait_for_everyone()
    return student, {**summary, "num_processes": world}
