"""Evaluate stage: NFE sweep of an exported student against the teacher's Euler and full-step reference (and,
when asked, the same student sampled consistency-style), ToyBench for the toy world, with a table, a plot,
sample sheets, bootstrap CIs and the any-step check, all logged to the stage's MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import task

from anyflow import vbench
from anyflow.evaluation import SweepSpec, consistency_sampler, plot_sweep, student_sampler, teacher_sampler, toy_sweep
from anyflow.export import Student, load_student
from anyflow.media import contact_sheet, save_gif
from anyflow.wan import load_teacher
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, stage_key
from tasks.stagerun import StageContext, prefect_cache_key, run_stage
from tasks.teacher import require_toy_world

HEADLINE = ("total", "quality", "semantic", "colour", "shape", "direction", "count", "dynamic", "swd",
            "sharpness_ratio", "seam_ratio", "latent_rel_error", "psnr", "step_convergence")


def grid_shift(cfg: PipelineConfig) -> float:
    """The shift of the N-step grid every model of the sweep samples on (student and teacher baselines alike):
    `evaluation.shift`, else the training shift `stage1.shift`, which the export also gives its scheduler."""
    return cfg.evaluation.shift if cfg.evaluation.shift is not None else cfg.stage1.shift


def shift_notice(model_shift: float, shift: float) -> str | None:
    """A line for the log when the sweep's grid is not the one the model's own scheduler samples on."""
    if abs(model_shift - shift) < 1e-9:
        return None
    return (f"the model's scheduler samples on a shift-{model_shift:g} grid; this sweep uses shift {shift:g} "
            f"(evaluation.shift, else stage1.shift). Set evaluation.shift={model_shift:g} to score it as it samples")


def on_grid(exported: Student, shift: float) -> Student:
    """Make the exported pipeline's scheduler sample on the shift-`shift` grid (in place; returns it)."""
    sched = exported.pipe.scheduler
    exported.pipe.scheduler = type(sched).from_config(sched.config, shift=shift)
    return exported


def _to_sweep_grid(exported: Student, shift: float) -> Student:
    """Put the exported pipeline on the sweep's grid, saying so when it is not the one its scheduler came with."""
    notice = shift_notice(exported.pipe.scheduler.config.shift, shift)
    if notice:
        print(f"[evaluate] {notice}", flush=True)
        on_grid(exported, shift)
    return exported


def evaluate_params(cfg: PipelineConfig) -> dict:
    return {**cfg.evaluation.model_dump(mode="json"), "shift": grid_shift(cfg)}


def evaluate_key(cfg: PipelineConfig, teacher: StageHandle, student: StageHandle) -> str:
    return stage_key("evaluate", evaluate_params(cfg), (teacher.key, student.key))


def sweep_spec(cfg: PipelineConfig) -> SweepSpec:
    e = cfg.evaluation
    return SweepSpec(nfe_list=tuple(e.nfe_list), num_prompts=e.num_prompts, seeds_per_prompt=e.seeds_per_prompt,
                     teacher_guidance_scale=e.teacher_guidance_scale, reference_steps=e.reference_steps,
                     bootstrap_samples=e.bootstrap_samples, shift=grid_shift(cfg), seed=e.seed)


def run_evaluation(cfg: PipelineConfig, teacher: StageHandle, student: StageHandle,
                   parent_run_id: str | None = None) -> StageHandle:
    if cfg.evaluation.backend == "vbench":
        return run_stage(cfg, "evaluate", evaluate_key(cfg, teacher, student), evaluate_params(cfg), parent_run_id,
                         lambda out, ctx: _vbench(cfg, student, out, ctx))

    def build(out: Path, ctx: StageContext) -> dict:
        world = require_toy_world(teacher, "ToyBench", "use evaluation.backend=vbench")
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        spec = sweep_spec(cfg)
        exported = _to_sweep_grid(load_student(Path(student.path) / student.summary["model"]), spec.shift)
        samplers = {"student": student_sampler(exported.pipe.transformer, spec.shift)}
        if cfg.evaluation.consistency_baseline:
            samplers["consistency"] = consistency_sampler(exported.pipe.transformer, spec.shift, spec.seed)
        samplers["teacher_euler"] = teacher_sampler(model, model.uncond_embedding(), spec.teacher_guidance_scale,
                                                    spec.shift)
        result = toy_sweep(samplers, model, spec, world, progress=lambda msg: print(f"[evaluate] {msg}", flush=True))
        table = pa.Table.from_pylist(result.rows)
        pq.write_table(table, out / "table.parquet")
        (out / "table.json").write_text(json.dumps(result.rows, indent=2))
        (out / "anystep.json").write_text(json.dumps(result.anystep, indent=2))
        plot_sweep(result.rows, out / "score_vs_nfe.png")
        for model_name in samplers:
            rows = {f"{n} NFE": v[:4] for (m, n), v in sorted(result.videos.items()) if m == model_name}
            if rows:
                contact_sheet(rows, out / f"samples_{model_name}.png")
        (out / "gifs").mkdir()
        for (m, n), v in result.videos.items():
            save_gif(v[0], out / "gifs" / f"{m}_nfe{n}.gif")
        for r in result.rows:
            prefix = "eval" if r["model"] == "student" else f"eval/{r['model']}"
            items = {k: r[k] for k in HEADLINE if r.get(k) is not None}
            ctx.log({f"{prefix}/{k}_nfe{r['nfe']}": v for k, v in items.items()}, r["nfe"])   # MLflow forbids "@"
            ctx.log({f"{prefix}/{k}": v for k, v in items.items()}, r["nfe"])   # curves over NFE
        if result.anystep:
            for name, check in {"student": result.anystep, **result.anystep.get("baselines", {})}.items():
                _log_anystep(ctx, "eval" if name == "student" else f"eval/{name}", check)
            ctx.tracker.set_tags(ctx.run_id, {"anystep_ok": str(result.anystep["ok"]).lower()})
        ctx.log.flush()
        for name in ("table.parquet", "table.json", "anystep.json", "score_vs_nfe.png",
                     *(f"samples_{m}.png" for m in samplers)):
            if (out / name).exists():
                ctx.log_artifact(out / name)
        ctx.log_artifact(out / "gifs", "gifs")
        student_rows = {r["nfe"]: round(r["total"], 4) for r in result.rows if r["model"] == "student"}
        baseline_spans = {m: c["span"] for m, c in result.anystep.get("baselines", {}).items() if "span" in c}
        return {"table": "table.parquet", "plot": "score_vs_nfe.png", "student_total": student_rows,
                "anystep_ok": result.anystep.get("ok"), "anystep_span": result.anystep.get("span"),
                "baseline_spans": baseline_spans}

    return run_stage(cfg, "evaluate", evaluate_key(cfg, teacher, student), evaluate_params(cfg), parent_run_id,
                     build)


def _log_anystep(ctx: StageContext, prefix: str, check: dict) -> None:
    """The any-step statistics of one sampler: the pairwise verdict, Spearman ρ and, with NFEs from 4 up,
    evaluation.md's ΔTotal(4 -> last) with its paired CI and Spearman ρ over those NFEs."""
    ctx.log({f"{prefix}/anystep_ok": float(check["ok"]), f"{prefix}/anystep_spearman": check["spearman"]}, 0)
    if "span" in check:
        span = check["span"]
        ctx.log({f"{prefix}/anystep_span_delta": span["delta"], f"{prefix}/anystep_span_ci_lo": span["ci_lo"],
                 f"{prefix}/anystep_span_ci_hi": span["ci_hi"],
                 f"{prefix}/anystep_spearman_span": check["spearman_span"]}, 0)


@task(name="evaluate", cache_key_fn=prefect_cache_key("evaluate", evaluate_key), persist_result=True)
def evaluate(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, student: StageHandle) -> StageHandle:
    return run_evaluation(cfg, teacher, student, parent_run_id)


def _vbench(cfg: PipelineConfig, student: StageHandle, out: Path, ctx: StageContext) -> dict:
    """VBench at each NFE of the sweep on the prompts in `synthesis.prompts` (GPU machines)."""
    from anyflow.prompts import load_prompts

    spec = cfg.evaluation.vbench
    vbench.check_ready(spec)                                     # fail before generating anything
    exported = _to_sweep_grid(load_student(Path(student.path) / student.summary["model"],
                                           device="cuda" if torch.cuda.is_available() else "cpu"), grid_shift(cfg))
    prompts = load_prompts(cfg.synthesis.prompts, cfg.evaluation.num_prompts)
    rows = []
    for nfe in cfg.evaluation.nfe_list:
        videos = vbench.write_videos(lambda ps, seed: exported.generate(ps, nfe=nfe, seed=seed, batch_size=1),
                                     prompts, out / f"videos_nfe{nfe}", spec.samples_per_prompt, spec.seed)
        result = vbench.run(spec, videos, out / f"vbench_nfe{nfe}", name=f"nfe{nfe}")
        rows.append({"model": "student", "nfe": nfe, **{f"raw_{k}": v for k, v in result["raw"].items()},
                     **result["official"], **{f"clipped_{k}": v for k, v in result["clipped"].items()},
                     "variant": result["variant"], "prompts": result["prompts"],
                     "samples_per_prompt": result["samples_per_prompt"], "seed": result["seed"]})
        ctx.log({f"vbench/{k}_nfe{nfe}": v for k, v in result["official"].items()}, nfe)
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
    plot_sweep([{**r, "total_ci_lo": r.get("total", 0), "total_ci_hi": r.get("total", 0)} for r in rows],
               out / "score_vs_nfe.png", title=f"VBench Total vs NFE ({spec.variant}, official aggregation)")
    ctx.log_artifact(out / "table.json")
    ctx.log_artifact(out / "score_vs_nfe.png")
    return {"table": "table.parquet", "plot": "score_vs_nfe.png",
            "student_total": {r["nfe"]: r.get("total") for r in rows}, "anystep_ok": None, "anystep_span": None}
