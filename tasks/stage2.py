"""Stage 2 task: on-policy flow-map distillation of the stage-1 student (recipe §7). Resumable from its
checkpoints in the stage's `.partial` directory. While it trains, a sample sheet per NFE is logged every
`stage2.preview_every` steps (`previews/step_NNNNNN.png`); with `stage2.probe_every`, the EMA student's
ToyBench Total at each probe NFE (metrics `probe/total_nfeN`, `probes.jsonl`, `probes.png`); at the end, a
histogram of the drawn rollout budgets s and trained steps k (`budgets.png`)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from anyflow.evaluation import ToyPrompts, probe_student
from anyflow.previews import plot_budgets, plot_probes, preview_sheet
from anyflow.prompts import load_prompts
from anyflow.shards import ShardReader
from anyflow.stage2 import Stage2Spec, train_stage2
from anyflow.teacher_tune import tuned_transformer
from anyflow.toybuild import toy_world_of
from anyflow.wan import Teacher, load_teacher
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, stage_key
from tasks.evaluate import grid_shift
from tasks.stage1 import EXECUTION_ONLY, loss_params, loss_spec
from tasks.stagerun import StageContext, loop_spec, prefect_cache_key, run_stage
from tasks.teacher import require_toy_world


# previews and probes are looked at, not learned from: they never change the stage's result
PREVIEW_ONLY = frozenset({"preview_every", "preview_nfes", "preview_prompts", "probe_every", "probe_nfes",
                          "probe_prompts"})


def stage2_params(cfg: PipelineConfig) -> dict:
    return {**cfg.stage2.model_dump(mode="json"), "stage1_loss": loss_params(loss_spec(cfg))}


def stage2_key(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, student: StageHandle,
               tuned: StageHandle | None = None) -> str:
    params = {k: v for k, v in stage2_params(cfg).items() if k not in EXECUTION_ONLY | PREVIEW_ONLY}
    upstream = (teacher.key, data.key, student.key) + ((tuned.key,) if tuned is not None else ())
    return stage_key("stage2", {**params, "negative_prompt": cfg.teacher.negative_prompt}, upstream)


def _previewer(cfg: PipelineConfig, model: Teacher, teacher: StageHandle, data: StageHandle, out: Path,
               ctx: StageContext):
    """preview(step, student): a sheet of the first evaluation prompts at each preview NFE, logged to MLflow."""
    c = cfg.stage2
    world = toy_world_of(teacher.path) if cfg.teacher.source == "toy" else None
    prompts = load_prompts(cfg.synthesis.prompts, c.preview_prompts, cfg.evaluation.seed, world)
    text = model.encode_prompts(prompts)
    shape = tuple(next(ShardReader(data.path).batches(1, seed=0)).latents.shape[1:])

    def preview(step: int, student) -> None:
        path = preview_sheet(student, model, text, shape, c.preview_nfes, cfg.stage1.shift,
                             out / "previews" / f"step_{step:06d}.png", seed=cfg.evaluation.seed, columns=prompts)
        ctx.log_artifact(path, "previews")

    return preview


def _prober(cfg: PipelineConfig, model: Teacher, teacher: StageHandle, out: Path, ctx: StageContext):
    """probe(step, student): ToyBench Total at each probe NFE on the first evaluation prompts and noise,
    logged as `probe/total_nfeN` and appended to `probes.jsonl` (a resumed run re-appends; the last wins)."""
    c = cfg.stage2
    world = require_toy_world(teacher, f"stage2.probe_every={c.probe_every} (ToyBench)", "set stage2.probe_every=0")
    prompts = ToyPrompts.build(model, world, c.probe_prompts, cfg.evaluation.seed)
    shift = grid_shift(cfg)

    def probe(step: int, student) -> None:
        totals = probe_student(student, model, prompts, tuple(c.probe_nfes), shift)
        ctx.log({f"probe/total_nfe{n}": v for n, v in totals.items()}, step)
        with (out / "probes.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "totals": {str(n): v for n, v in totals.items()}}) + "\n")

    return probe


def _read_jsonl_by_step(path: Path) -> dict[int, dict]:
    """{step: record} of a per-step log; the last record of a step wins (a resumed run repeats steps)."""
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            d = json.loads(line)
            records[d["step"]] = d
    return records


def run_stage2(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, student: StageHandle,
               parent_run_id: str | None = None, progress: bool = True, tuned: StageHandle | None = None) -> StageHandle:
    c = cfg.stage2
    if cfg.teacher_tune.enabled and tuned is None:
        raise ValueError("teacher_tune.enabled=true but stage 2 got no tuned teacher: run it through the pipeline "
                         "flow, or pass the teacher_tune stage's handle")

    def build(out: Path, ctx: StageContext) -> dict:
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        real = tuned_transformer(model, Path(tuned.path) / tuned.summary["lora"]) if tuned is not None else None
        draws_file = out / "draws.jsonl"     # (step, s, k) per generator update; a resumed run re-appends steps

        def log(metrics, step):
            ctx.log(metrics, step)
            if "stage2/s" in metrics:
                with draws_file.open("a") as f:
                    f.write(json.dumps({"step": step, "s": int(metrics["stage2/s"]), "k": int(metrics["stage2/k"])})
                            + "\n")
        spec = Stage2Spec(rollout_budgets=tuple(c.rollout_budgets), real_guidance_scale=c.real_guidance_scale,
                          dmd_weight=c.dmd_weight, flowmap_weight=c.flowmap_weight,
                          generator_every=c.critic_updates_per_generator_update, shift=cfg.stage1.shift)
        loop = loop_spec(c, "stage2")
        _, summary = train_stage2(model, Path(student.path) / student.summary["lora"], data.path, out,
                                  critic_lora=c.critic_lora, loss=loss_spec(cfg), spec=spec, loop=loop,
                                  generator_lr=c.lr, critic_lr=c.critic_lr, betas=tuple(c.betas),
                                  batch_size=c.batch_size, gate_value=cfg.stage1.gate_value, log=log,
                                  progress=progress, gradient_checkpointing=c.gradient_checkpointing,
                                  real_transformer=real, preview_every=c.preview_every,
                                  preview=_previewer(cfg, model, teacher, data, out, ctx) if c.preview_every else None,
                                  probe_every=c.probe_every,
                                  probe=_prober(cfg, model, teacher, out, ctx) if c.probe_every else None)
        summary.pop("losses")
        draws = {step: (d["s"], d["k"]) for step, d in _read_jsonl_by_step(draws_file).items()}
        ctx.log_artifact(plot_budgets(list(draws.values()), out / "budgets.png"))
        probes = {step: {int(n): v for n, v in d["totals"].items()}
                  for step, d in _read_jsonl_by_step(out / "probes.jsonl").items()}
        if probes:
            ctx.log_artifact(plot_probes(probes, out / "probes.png"))
            summary["probe"] = {str(n): v for n, v in probes[max(probes)].items()}
        counts = {str(s): sum(1 for ss, _ in draws.values() if ss == s) for s in sorted({s for s, _ in draws.values()})}
        return {**summary, "lora": "lora.safetensors", "budget_counts": counts,
                "tuned_teacher": tuned.key if tuned is not None else None}

    return run_stage(cfg, "stage2", stage2_key(cfg, teacher, data, student, tuned), stage2_params(cfg),
                     parent_run_id, build, resumable=True)


@task(name="stage2", cache_key_fn=prefect_cache_key("stage2", stage2_key), persist_result=True)
def stage2(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, data: StageHandle,
           student: StageHandle, tuned: StageHandle | None = None) -> StageHandle:
    return run_stage2(cfg, teacher, data, student, parent_run_id, tuned=tuned)
