"""Downstream fine-tuning (paper §5, Fig. 7-8): continue the distilled student's forward flow-map training on
a new dataset. The flow map is preserved, so the fine-tuned student keeps sampling in any number of steps.

Data: one of the toy world's downstream domains (`anyflow.toydomains`: a new object colour, or bouncing motion),
rendered and VAE-encoded into the same shards the synthesis stage writes, or any shard folder a user brings.
Objective: the stage-1 loss (`flowmap_loss`), optionally replaying a fraction of base-domain shards in every batch
against forgetting, either through the same loss or through the anchor (`anchor_loss`), which keeps the distilled
student's own few-step map. The adapter is the distilled student's LoRA, optionally widened to more modules
(`extra_lora_targets`, e.g. the cross-attention keys and values a new word needs; they start at zero).
Evaluation: the domain's DownstreamBench before and after at several NFEs, and ToyBench on the base domain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from anyflow import toyworld
from anyflow.export import Student
from anyflow.flowmap import flowmap_step
from anyflow.lora import LoraSpec, load_lora, lora_parameters, save_lora
from anyflow.media import save_figure
from anyflow.shards import Batch, ShardReader, ShardWriter, open_shards, real_rows
from anyflow.stage1 import FlowMapLossSpec, flowmap_loss
from anyflow.schedule import time_grid
from anyflow.student import average_velocity, student_from_teacher
from anyflow.toydomains import Domain, get_domain
from anyflow.training import LogFn, LoopSpec, train
from anyflow.wan import Teacher

# ---------------------------------------------------------------------------------------------- data

def _write_shards(out_dir: str | Path, num: int, make: Callable[[int, int], list[dict]], manifest: dict, *,
                  samples_per_shard: int, batch_size: int, desc: str, progress: bool) -> dict:
    """Synthesis-format shards of samples [0, num), `make(lo, hi)` producing the items of one batch; resumes after
    the shards already written (the ledger), so a rerun writes exactly what an uninterrupted one would."""
    writer = ShardWriter(out_dir, samples_per_shard)
    first = writer.num_written
    bar = tqdm(total=num, initial=first, desc=desc, disable=not progress, unit="sample")
    for lo in range(first, num, samples_per_shard):
        hi = min(lo + samples_per_shard, num)
        pending = []
        for b in range(lo, hi, batch_size):
            pending += make(b, min(b + batch_size, hi))
            bar.update(min(b + batch_size, hi) - b)
        writer.write_shard(pending)
    bar.close()
    writer.write_manifest({"num_samples": writer.num_written, **manifest})
    return {"num_samples": writer.num_written, "num_shards": len(writer.shards), "resumed_from": first}


def render_downstream_shards(teacher: Teacher, world: toyworld.WorldSpec, out_dir: str | Path, *, domain: str,
                             num_samples: int, seed: int, samples_per_shard: int = 256, batch_size: int = 64,
                             progress: bool = True) -> dict:
    """Render `num_samples` videos of the toy downstream `domain`, encode them with the teacher's VAE and text
    encoder and write synthesis-format shards (resuming after the shards already written)."""
    dom = get_domain(domain)
    conds = dom.conditions(num_samples, seed, world)

    def make(lo: int, hi: int) -> list[dict]:
        part = conds[lo:hi]
        pixels = torch.from_numpy(dom.render(part, world)).permute(0, 4, 1, 2, 3) * 2 - 1
        latents = teacher.encode_video(pixels)
        rows = real_rows(teacher.encode_prompts([c.prompt for c in part]))
        return [{"key": f"{i:08d}", "latents": lat.permute(1, 0, 2, 3).numpy(), "prompt_embeds": emb,
                 "prompt": cond.prompt, "meta": {"index": i, "domain": domain, "start": list(cond.start)}}
                for i, (cond, lat, emb) in enumerate(zip(part, latents, rows), start=lo)]

    return _write_shards(out_dir, num_samples, make,
                         {"max_sequence_length": teacher.max_sequence_length, "source": f"toy {domain} renders",
                          "seed": seed, "negative_prompt": teacher.negative_prompt,
                          "video": {"height": world.height, "width": world.width, "num_frames": world.num_frames}},
                         samples_per_shard=samples_per_shard, batch_size=batch_size, desc="downstream data",
                         progress=progress)


def student_replay_shards(student: Student, teacher: Teacher, prompts: list[str], out_dir: str | Path, *, nfe: int,
                          seed: int, samples_per_shard: int = 256, batch_size: int = 64, progress: bool = True) -> dict:
    """Replay data that keeps what distillation achieved: the distilled student's own `nfe`-step samples for
    base-domain `prompts`, as synthesis-format shards (resumable). Replaying the teacher's data instead pulls
    the student back toward the teacher's quality (the stage-1 level), since the flow-map loss fits its data."""
    def make(lo: int, hi: int) -> list[dict]:
        part = prompts[lo:hi]
        latents = student.generate(part, nfe=nfe, seed=seed + lo, batch_size=batch_size, output_type="latent")
        rows = real_rows(teacher.encode_prompts(part))
        return [{"key": f"{i:08d}", "latents": lat.permute(1, 0, 2, 3).float().numpy(), "prompt_embeds": emb,
                 "prompt": prompt, "meta": {"index": i, "seed": seed + i, "nfe": nfe, "source": "distilled student"}}
                for i, (prompt, lat, emb) in enumerate(zip(part, latents, rows), start=lo)]

    return _write_shards(out_dir, len(prompts), make,
                         {"max_sequence_length": teacher.max_sequence_length, "seed": seed,
                          "source": f"distilled student, {nfe} NFE", "negative_prompt": teacher.negative_prompt},
                         samples_per_shard=samples_per_shard, batch_size=batch_size, desc="replay samples",
                         progress=progress)


def mixed_batches(main: ShardReader, replay: ShardReader | None, batch_size: int, replay_size: int, seed: int,
                  start: int = 0) -> Iterator[Batch]:
    """Batches of `batch_size − replay_size` samples of `main` plus `replay_size` of `replay`; `start` (a
    previous Batch.position, counted in whole batches) resumes both streams where they stopped."""
    if replay is None or replay_size == 0:
        yield from main.batches(batch_size, seed=seed, start=start)
        return
    if not 0 < replay_size < batch_size:
        raise ValueError(f"replay_size must be in (0, batch_size={batch_size}), got {replay_size}")
    done = start // batch_size
    a = main.batches(batch_size - replay_size, seed=seed, start=done * (batch_size - replay_size))
    b = replay.batches(replay_size, seed=seed + 1, start=done * replay_size)
    for n, (x, y) in enumerate(zip(a, b), start=done + 1):
        yield Batch(latents=torch.cat([x.latents, y.latents]), prompt_embeds=torch.cat([x.prompt_embeds, y.prompt_embeds]),
                    prompts=x.prompts + y.prompts, position=n * batch_size)


# ------------------------------------------------------------------------------------------ training

def anchor_loss(model: torch.nn.Module, anchor: torch.nn.Module, text: torch.Tensor, like: torch.Tensor, nfe: int,
                shift: float, generator: torch.Generator) -> torch.Tensor:
    """Function-space anchor against forgetting (learning-without-forgetting applied to the flow map):

        L = E_i ‖u_θ(z_{t_i}, t_i, t_{i+1}, c) − u_θ₀(z_{t_i}, t_i, t_{i+1}, c)‖²,

    where u_θ₀ is the frozen distilled student before fine-tuning, (t_i) = `time_grid(nfe, shift)` its
    `nfe`-step grid (recipe §8.1), and z_{t_i} the states of u_θ₀'s own `nfe`-step trajectory from fresh noise
    for the base-domain prompts `text` (one random step i per sample; the noise has the shape, device and dtype
    of the latents `like`). It keeps the few-step jumps that DMD tuned where the base sampler actually goes;
    the flow-map loss on base data instead pulls them back toward the teacher's data."""
    b, device = like.shape[0], like.device
    grid = time_grid(nfe, shift).to(device, torch.float32)
    step = torch.randint(nfe, (b,), generator=generator).to(device)
    with torch.no_grad():
        z = torch.randn(like.shape, generator=generator).to(device, like.dtype)
        states, targets = torch.empty_like(z), torch.empty_like(z)
        for i in range(nfe):
            t, r = grid[i].expand(b), grid[i + 1].expand(b)
            u = average_velocity(anchor, z, t, r, text)
            here = step == i
            states[here], targets[here] = z[here], u[here]
            if not (step > i).any():
                break
            z = flowmap_step(z, u, t, r)
    u = average_velocity(model, states, grid[step], grid[step + 1], text)
    return ((u.float() - targets.float()) ** 2).mean()


def finetune_student(teacher: Teacher, student_lora: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                     loss: FlowMapLossSpec, loop: LoopSpec, batch_size: int, gate_value: float,
                     replay_dir: str | Path | None = None, replay_fraction: float = 0.0,
                     anchor_weight: float = 0.0, anchor_nfe: int = 4, extra_lora_targets: tuple[str, ...] = (),
                     log: LogFn = lambda m, s: None, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Continue the distilled student's LoRA, widened to `extra_lora_targets` (zero-initialised, so the start is
    the distilled student exactly), with the forward flow-map loss on `data_dir` (resumable from
    `out_dir/checkpoints`). Replayed base-domain rows (`replay_fraction` of each batch) train the same loss,
    or, with `anchor_weight` > 0, only `anchor_loss` at the `anchor_nfe`-step grid (weighted, added).
    Writes `out_dir/lora.safetensors` (EMA weights); returns (student, summary)."""
    out_dir = Path(out_dir)
    student = student_from_teacher(teacher.transformer, gate_value)
    spec: LoraSpec = load_lora(student, student_lora, extra_targets=extra_lora_targets, seed=loop.seed)
    params = lora_parameters(student)
    student.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    reader = open_shards(data_dir, teacher.max_sequence_length)
    replay = open_shards(replay_dir, teacher.max_sequence_length) \
        if replay_dir is not None and replay_fraction > 0 else None
    replay_size = round(replay_fraction * batch_size) if replay is not None else 0
    if anchor_weight > 0 and replay_size == 0:
        raise ValueError("anchor_weight > 0 needs replayed base-domain rows (replay_fraction > 0 and a replay_dir)")
    anchor = copy.deepcopy(student).eval().requires_grad_(False) if anchor_weight > 0 else None
    uncond = teacher.uncond_embedding()

    def step(model, batch, generator):
        if anchor is None:
            return flowmap_loss(model, batch.latents, batch.prompt_embeds, uncond, loss, generator)
        n = len(batch.latents) - replay_size          # mixed_batches puts the replayed rows last
        l_fm, parts = flowmap_loss(model, batch.latents[:n], batch.prompt_embeds[:n], uncond, loss, generator)
        l_anchor = anchor_loss(model, anchor, batch.prompt_embeds[n:], batch.latents[n:], anchor_nfe, loss.shift,
                               generator)
        return l_fm + anchor_weight * l_anchor, {**parts, "flowmap_loss": float(l_fm.detach()),
                                                 "anchor_loss": float(l_anchor.detach())}

    summary = train(student, params, step,
                    lambda pos: mixed_batches(reader, replay, batch_size, replay_size, loop.seed, pos),
                    loop, out_dir / "checkpoints", log=log, progress=progress)
    save_lora(student, out_dir / "lora.safetensors", spec)
    return student, {**summary, "replay_per_batch": replay_size, "anchor_weight": anchor_weight,
                     "lora_targets": list(spec.targets)}


# ------------------------------------------------------------------------------------------- metrics

def summarize(scores: dict[str, np.ndarray], samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Means, and a bootstrap 95 % interval of the headline score."""
    rng = np.random.default_rng(seed)
    s = scores["score"]
    boots = s[rng.integers(0, len(s), size=(samples, len(s)))].mean(axis=1)
    return {**{k: float(v.mean()) for k, v in scores.items()},
            "score_ci_lo": float(np.percentile(boots, 2.5)), "score_ci_hi": float(np.percentile(boots, 97.5))}


# ----------------------------------------------------------------------------------- before / after

def paired_ci(after: np.ndarray, before: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the per-video difference after − before (same prompts, same noise) and its bootstrap 95 % CI."""
    d = np.asarray(after) - np.asarray(before)
    boots = d[np.random.default_rng(seed).integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def compare_before_after(models: dict[str, Student], world: toyworld.WorldSpec, dom: Domain, nfes: tuple[int, ...],
                         num_prompts: int, seed: int, base_nfes: tuple[int, ...] = (4,),
                         progress=lambda msg: None) -> tuple[list[dict], dict]:
    """Score exported students (e.g. {"before": …, "after": …}) with common random numbers: the toy domain `dom`'s
    DownstreamBench on its prompts at `nfes` (rows with domain "downstream"), ToyBench Total on base-domain
    prompts at `base_nfes` (did it forget?).
    Returns (rows, {"per_video": {(domain, model, nfe): per-video headline}, "videos": {...}, "conditions": the
    downstream prompts' conditions, "real_downstream_score": real renders of them scored the same way})."""
    from anyflow import toybench

    down = dom.conditions(num_prompts, seed, world)
    base = toyworld.sample_conditions(num_prompts, seed, "base", world)
    base_real = toybench.real_reference(base, world, seed)
    rows, per_video, videos = [], {}, {}
    for name, model in models.items():
        for nfe in nfes:
            progress(f"{name}: downstream, NFE {nfe}")
            vids = model.generate([c.prompt for c in down], nfe=nfe, seed=seed)
            scores = dom.scores(vids, down, world)
            rows.append({"domain": "downstream", "model": name, "nfe": nfe, **summarize(scores, seed=seed)})
            per_video[("downstream", name, nfe)] = scores["score"]
            videos[("downstream", name, nfe)] = vids
        for nfe in base_nfes:
            progress(f"{name}: base domain, NFE {nfe}")
            vids = model.generate([c.prompt for c in base], nfe=nfe, seed=seed)
            metrics, totals = toybench.score(vids, base, world, base_real, seed=seed)
            rows.append({"domain": "base", "model": name, "nfe": nfe, "total": metrics["total"],
                         "quality": metrics["quality"], "semantic": metrics["semantic"]})
            per_video[("base", name, nfe)] = totals
    real_score = float(dom.scores(dom.render(down, world), down, world)["score"].mean())
    return rows, {"per_video": per_video, "videos": videos, "conditions": down, "real_downstream_score": real_score}


def plot_before_after(rows: list[dict], path: str | Path, real_score: float | None = None,
                      measures: str = "the downstream domain") -> Path:
    """DownstreamBench score vs NFE, one line per model, with 95 % CIs (and the real renders' score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in dict.fromkeys(r["model"] for r in rows if r["domain"] == "downstream"):
        pts = sorted((r for r in rows if r["domain"] == "downstream" and r["model"] == name), key=lambda r: r["nfe"])
        y = [r["score"] for r in pts]
        err = [[r["score"] - r["score_ci_lo"] for r in pts], [r["score_ci_hi"] - r["score"] for r in pts]]
        ax.errorbar([r["nfe"] for r in pts], y, yerr=err, marker="o", capsize=3, label=f"student {name} fine-tuning")
    if real_score is not None:
        ax.axhline(real_score, ls="--", c="gray", label="real downstream renders")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"DownstreamBench score ({measures})")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def before_after_summary(rows: list[dict], per_video: dict, seed: int = 0) -> dict:
    """Per domain and NFE: before, after, and the paired difference with its 95 % CI; `base_within_noise` is
    true when no base-domain difference is significantly negative (fine-tuning did not measurably forget)."""
    out = {"downstream": {}, "base": {}}
    for r in rows:
        if r["model"] != "after":
            continue
        domain, n = r["domain"], r["nfe"]
        metric = "score" if domain == "downstream" else "total"
        before = next(x[metric] for x in rows if (x["domain"], x["model"], x["nfe"]) == (domain, "before", n))
        d, lo, hi = paired_ci(per_video[(domain, "after", n)], per_video[(domain, "before", n)], seed=seed)
        out[domain][str(n)] = {"before": before, "after": r[metric], "diff": d, "diff_ci_lo": lo, "diff_ci_hi": hi}
    out["base_within_noise"] = all(v["diff_ci_hi"] >= 0 for v in out["base"].values())
    return out
