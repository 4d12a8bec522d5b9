"""NFE sweeps with common random numbers: the model under test against the teacher's baselines (DESIGN §8).

Every sampler starts from the same noise per (prompt, seed): sample i's noise comes from a generator
seeded `seed + i`. Rows of the result table are (model, NFE); the models are
  student         the flow-map student, N steps on the shifted grid, guidance fused: NFE = N
  consistency     the same student sampled consistency-style (jump to data, re-noise; evaluation.md §2.3 "CM"),
                  the sampler the paper contrasts with flow-map sampling: NFE = N
  teacher_euler   the teacher's Euler with CFG at N/2 steps: NFE = 2·(N/2) (CFG is counted; odd NFEs skipped)
  reference       the teacher's full-step CFG solution (`reference_steps` Euler steps), the converged ODE answer
Scores come from ToyBench (anyflow.toybench) for the toy world. Total gets a bootstrap CI over videos, and
the any-step check asks that the student's Total never falls by more than its noise as NFE grows. Beside it,
the protocol statistics of reference/evaluation.md §2.3: ΔTotal = Total(32) − Total(4) with a paired 95 % CI
and Spearman ρ over the NFEs from 4 up; and per row the step-refinement convergence C(N) (§2.2 A.2). The same
statistics are computed for every baseline sampler, so the student's curve reads against theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from anyflow import toybench, toyworld
from anyflow.flowmap import AverageVelocityFn, classifier_free_guidance, sample_euler, sample_flow_map, x0_estimate
from anyflow.guidance import cond_uncond_velocity
from anyflow.media import save_figure
from anyflow.schedule import time_grid
from anyflow.student import average_velocity
from anyflow.wan import Teacher

# sampler(noise [B, C, F, H, W], text [B, S, D], steps) -> latents [B, C, F, H, W]
Sampler = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    nfe_list: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    num_prompts: int = 64
    seeds_per_prompt: int = 1
    teacher_guidance_scale: float = 4.0
    reference_steps: int = 50
    bootstrap_samples: int = 1000
    shift: float = 3.0
    batch_size: int = 32
    seed: int = 1234


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """[n, *shape] standard normal, sample i from its own generator seeded `seed + i` (common random numbers)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def latent_shape(teacher: Teacher, world: toyworld.WorldSpec) -> tuple[int, ...]:
    """[C, F, H, W] of one toy-world video's latents under the teacher's VAE."""
    return tuple(teacher.encode_video(torch.zeros(1, 3, world.num_frames, world.height, world.width)).shape[1:])


def _flow_map(model, text: torch.Tensor) -> AverageVelocityFn:
    """u(z, t, r) of the flow-map `model` under the prompt embeddings `text` (guidance fused)."""
    return lambda z, t, r: average_velocity(model, z, t, r, text)


def student_sampler(model, shift: float) -> Sampler:
    return lambda noise, text, steps: sample_flow_map(_flow_map(model, text), noise, steps, shift)


def renoise(z_T: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """Fresh standard normal noise shaped like `z_T` for re-noising step `step`. Sample j's draw comes from a
    generator seeded by (seed, step, its own initial noise), so it does not depend on the batch it is sampled in,
    reruns repeat it bit for bit, and every NFE re-noises a given sample with the same draws (common random
    numbers, evaluation.md §2.3)."""
    out = torch.empty_like(z_T)
    for j, z in enumerate(z_T):
        ident = hashlib.blake2b(z.detach().cpu().contiguous().numpy().tobytes(), digest_size=8,
                                key=f"{seed}:{step}".encode()).digest()
        out[j] = torch.randn(z.shape, generator=torch.Generator().manual_seed(int.from_bytes(ident, "little") >> 1),
                             dtype=z_T.dtype)
    return out


def sample_consistency(u_fn: AverageVelocityFn, noise: torch.Tensor, num_steps: int, shift: float,
                       seed: int) -> torch.Tensor:
    """Multistep consistency sampling with a flow map (evaluation.md §2.3 "CM", as rCM and Self-Forcing sample):
    at each point σ_i of `time_grid(N, shift)` jump to data, x̂₀ = z − σ_i·u(z, σ_i, 0), then re-noise to the next
    point with fresh noise, z_{σ_{i+1}} = (1 − σ_{i+1})·x̂₀ + σ_{i+1}·ε_i; the last x̂₀ is the sample. N network
    calls (NFE = N); N = 1 is the flow-map sampler's single jump. Each step starts over from a one-shot estimate
    instead of following the trajectory, which is why the paper expects it not to improve with N."""
    grid = time_grid(num_steps, shift).tolist()
    z, batch = noise, noise.shape[0]
    for i, (t, r) in enumerate(zip(grid[:-1], grid[1:])):
        t_b = torch.full((batch,), t, dtype=torch.float32, device=noise.device)
        x0 = x0_estimate(z, u_fn(z, t_b, torch.zeros_like(t_b)), t_b)
        z = x0 if r == 0 else (1 - r) * x0 + r * renoise(noise, i, seed).to(noise.device)
    return z


def consistency_sampler(model, shift: float, seed: int) -> Sampler:
    """The flow-map student sampled consistency-style (`sample_consistency`), guidance fused: NFE = N."""
    return lambda noise, text, steps: sample_consistency(_flow_map(model, text), noise, steps, shift, seed)


def teacher_sampler(teacher: Teacher, uncond: torch.Tensor, guidance: float, shift: float) -> Sampler:
    """Euler on the teacher's velocity with CFG (one batched call for both branches)."""
    def velocity(z, t, text):
        return classifier_free_guidance(*cond_uncond_velocity(teacher.transformer, z, t, text, uncond), guidance)
    return lambda noise, text, steps: sample_euler(lambda z, t: velocity(z, t, text), noise, steps, shift)


@torch.no_grad()
def run_sampler(sampler: Sampler, noise: torch.Tensor, text: torch.Tensor, steps: int, batch_size: int) -> torch.Tensor:
    return torch.cat([sampler(noise[i:i + batch_size], text[i:i + batch_size], steps)
                      for i in range(0, len(noise), batch_size)])


def bootstrap_ci(values: np.ndarray, samples: int, seed: int) -> tuple[float, float, float]:
    """(std error, 2.5 %, 97.5 %) of the mean by bootstrap over videos."""
    if samples < 1 or len(values) < 2:
        return 0.0, float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return float(means.std()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


SPAN_START_NFE = 4          # evaluation.md §2.3: ΔM = M(32) − M(4), Spearman ρ over {4, 8, 16, 32}


def _spearman(nfes: list[int], means: list[float]) -> float:
    if len(nfes) < 3:
        return 1.0 if len(nfes) < 2 or means[-1] >= means[0] else -1.0
    return float(np.corrcoef(np.argsort(np.argsort(nfes)), np.argsort(np.argsort(means)))[0, 1])


def anystep_check(nfes: list[int], per_video_totals: list[np.ndarray], samples: int, seed: int,
                  span_start: int = SPAN_START_NFE) -> dict:
    """Does Total keep from falling as NFE grows? For each consecutive pair, the paired bootstrap of
    ΔTotal = Total(N_next) − Total(N) must not be significantly negative (97.5 % quantile ≥ 0): `ok`.

    Also the protocol of evaluation.md §2.3, which `ok` is stricter than: `span` is ΔTotal from `span_start`
    NFE to the largest NFE with its paired 95 % CI (its `ok`: not significantly negative), and
    `spearman_span` is Spearman ρ(N, Total) over the NFEs ≥ `span_start` (`spearman` is over all of them)."""
    rng = np.random.default_rng(seed)
    pairs, ok = [], True
    for (n0, a), (n1, b) in zip(zip(nfes, per_video_totals), list(zip(nfes, per_video_totals))[1:]):
        d = b - a
        idx = rng.integers(0, len(d), (max(samples, 1), len(d)))
        hi = float(np.percentile(d[idx].mean(axis=1), 97.5))
        pairs.append({"from": n0, "to": n1, "delta": float(d.mean()), "delta_hi": hi})
        ok &= hi >= 0
    means = [float(t.mean()) for t in per_video_totals]
    out = {"ok": bool(ok), "pairs": pairs, "spearman": _spearman(nfes, means)}
    tail = [i for i, n in enumerate(nfes) if n >= span_start]
    if len(tail) >= 2:
        i, j = tail[0], tail[-1]
        _, lo, hi = bootstrap_ci(per_video_totals[j] - per_video_totals[i], samples, seed)   # paired: per video
        out["span"] = {"from": nfes[i], "to": nfes[j], "delta": means[j] - means[i], "ci_lo": lo, "ci_hi": hi,
                       "ok": hi >= 0}
        out["spearman_span"] = _spearman([nfes[k] for k in tail], [means[k] for k in tail])
    return out


def step_convergence(x: torch.Tensor, x_finer: torch.Tensor) -> float:
    """C(N) = mean_i ‖x̂_N,i − x̂_2N,i‖ / ‖x̂_2N,i‖ (evaluation.md §2.2 A.2): how much doubling the steps still
    moves a sample. A flow map's Euler converges, so it shrinks towards 0 as N grows."""
    x, x_finer = x.flatten(1).double(), x_finer.flatten(1).double()
    return float(((x - x_finer).norm(dim=1) / x_finer.norm(dim=1).clamp_min(1e-12)).mean())


@dataclass
class SweepResult:
    rows: list[dict]                       # one per (model, nfe)
    videos: dict[tuple[str, int], np.ndarray]
    anystep: dict                          # the student's check; its "baselines" hold the others' (evaluation.md §2.3)


@dataclass
class ToyPrompts:
    """The fixed half of a ToyBench measurement, built once: base-domain prompts, their text embeddings, the
    common noise (sample i seeded `seed + i`) and the real reference. Every sampler and NFE of a sweep, and
    every training-time probe, is scored against the same ones."""

    conds: list[toyworld.Condition]
    text: torch.Tensor
    noise: torch.Tensor
    real: toybench.RealReference
    world: toyworld.WorldSpec
    patch: int | None                      # the VAE's patch size, for the seam diagnostic
    seed: int

    @classmethod
    def build(cls, teacher: Teacher, world: toyworld.WorldSpec, num_prompts: int, seed: int,
              seeds_per_prompt: int = 1) -> ToyPrompts:
        conds = [c for c in toyworld.sample_conditions(num_prompts, seed, "base", world)
                 for _ in range(seeds_per_prompt)]
        return cls(conds=conds, text=teacher.encode_prompts([c.prompt for c in conds]),
                   noise=initial_noise(len(conds), latent_shape(teacher, world), seed),
                   real=toybench.real_reference(conds, world, seed), world=world,
                   patch=getattr(teacher.vae.config, "scale_factor_spatial", None), seed=seed)

    def sample(self, sampler: Sampler, steps: int, batch_size: int) -> torch.Tensor:
        return run_sampler(sampler, self.noise, self.text, steps, batch_size)

    def score(self, teacher: Teacher, latents: torch.Tensor) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """(ToyBench items and Total, per-video Total, decoded videos) of `latents` drawn from this noise."""
        videos = teacher.decode(latents)
        metrics, per_video = toybench.score(videos, self.conds, self.world, self.real, seed=self.seed,
                                            patch=self.patch)
        return metrics, per_video, videos


def toy_sweep(samplers: dict[str, Sampler], teacher: Teacher, spec: SweepSpec, world: toyworld.WorldSpec,
              progress: Callable[[str], None] = lambda msg: None) -> SweepResult:
    """Score every sampler at every NFE of `spec` (and the teacher reference) on toy-world prompts."""
    prompts = ToyPrompts.build(teacher, world, spec.num_prompts, spec.seed, spec.seeds_per_prompt)

    progress(f"reference: teacher Euler + CFG {spec.teacher_guidance_scale}, {spec.reference_steps} steps")
    ref_sampler = teacher_sampler(teacher, teacher.uncond_embedding(), spec.teacher_guidance_scale, spec.shift)
    ref_latents = prompts.sample(ref_sampler, spec.reference_steps, spec.batch_size)
    ref_videos = teacher.decode(ref_latents)

    rows, videos, totals, samples = [], {}, {}, {}

    def add(model: str, nfe: int, steps: int, latents: torch.Tensor) -> None:
        metrics, per_video, vids = prompts.score(teacher, latents)
        se, lo, hi = bootstrap_ci(per_video, spec.bootstrap_samples, spec.seed)
        fid = toybench.fidelity(latents.numpy(), ref_latents.numpy(), vids, ref_videos)
        rows.append({"model": model, "nfe": nfe, "steps": steps, **metrics, **fid,
                     "total_se": se, "total_ci_lo": lo, "total_ci_hi": hi})
        videos[(model, nfe)] = vids
        totals[(model, nfe)] = per_video
        samples[(model, nfe)] = latents

    add("reference", 2 * spec.reference_steps, spec.reference_steps, ref_latents)
    for name, sampler in samplers.items():
        for nfe in spec.nfe_list:
            steps = nfe // 2 if name == "teacher_euler" else nfe
            if name == "teacher_euler" and nfe % 2:
                continue                    # CFG costs two evaluations per step
            progress(f"{name}: NFE {nfe} ({steps} steps)")
            add(name, nfe, steps, prompts.sample(sampler, steps, spec.batch_size))
    for r in rows:                          # C(N) wherever the sweep also ran 2N (None elsewhere: same columns)
        finer = samples.get((r["model"], 2 * r["nfe"])) if r["model"] != "reference" else None
        r["step_convergence"] = None if finer is None else step_convergence(samples[(r["model"], r["nfe"])], finer)
    checks = {}
    for name in samplers:                   # the student's check, and the same statistics for each baseline
        nfes = [n for n in spec.nfe_list if (name, n) in totals]
        if name == "student" or len(nfes) >= 2:
            checks[name] = anystep_check(nfes, [totals[(name, n)] for n in nfes], spec.bootstrap_samples, spec.seed)
    anystep = checks.pop("student", {})
    if anystep and checks:
        anystep["baselines"] = checks
    return SweepResult(rows=rows, videos=videos, anystep=anystep)


@torch.no_grad()
def probe_student(student, teacher: Teacher, prompts: ToyPrompts, nfes: tuple[int, ...], shift: float,
                  batch_size: int = 32) -> dict[int, float]:
    """ToyBench Total of the flow-map `student` at each NFE in `nfes` on `prompts`: the cheap any-step curve
    a training run logs as it goes (no teacher baselines, no CIs)."""
    sampler = student_sampler(student, shift)
    return {n: prompts.score(teacher, prompts.sample(sampler, n, batch_size))[0]["total"] for n in nfes}


PLOT_LABELS = {"student": "student (flow-map sampling)", "consistency": "student, consistency sampling",
               "teacher_euler": "teacher Euler + CFG"}


def plot_sweep(rows: list[dict], path, title: str = "ToyBench Total vs NFE (not comparable to VBench)") -> None:
    """Score-vs-NFE plot: a line with 95 % CI per model, the reference as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] != "reference"):   # in sweep order
        pts = sorted((r for r in rows if r["model"] == model), key=lambda r: r["nfe"])
        x = [r["nfe"] for r in pts]
        y = [r["total"] for r in pts]
        err = [[r["total"] - r["total_ci_lo"] for r in pts], [r["total_ci_hi"] - r["total"] for r in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=PLOT_LABELS.get(model, model))
    for r in rows:
        if r["model"] == "reference":
            ax.axhline(r["total"], ls="--", c="gray", label=f"teacher reference ({r['steps']} steps + CFG)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE (network evaluations; CFG counts twice)")
    ax.set_ylabel("Total")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
