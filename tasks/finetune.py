"""Downstream fine-tuning stages (DESIGN §1 "finetune", paper Fig. 7-8), after the main evaluation:

  downstream_data   a toy downstream domain (anyflow.toydomains) rendered and encoded into shards (or a user's folder)
  finetune          the distilled student's LoRA continued with the forward flow-map loss, then exported
  finetune_eval     before vs after on the downstream domain at several NFEs, and on the base domain (forgetting)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from prefect import task

from anyflow.downstream import (before_after_summary, compare_before_after, finetune_student, plot_before_after,
                                render_downstream_shards, student_replay_shards)
from anyflow.export import load_student
from anyflow.media import contact_sheet
from anyflow.prompts import load_prompts
from anyflow.shards import ShardReader
from anyflow.stage1 import FlowMapLossSpec
from anyflow.toybuild import toy_world_of
from anyflow.toydomains import DOMAINS, get_domain
from anyflow.wan import load_teacher
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, folder_fingerprint, stage_key, write_json_atomic
from tasks.export import export_lora_student
from tasks.stage1 import loss_params, loss_spec
from tasks.stagerun import StageContext, loop_spec, prefect_cache_key, run_stage
from tasks.teacher import require_toy_world

EVAL_ONLY = ("nfe_list", "base_nfe_list", "num_eval_prompts", "bench")


# ------------------------------------------------------------------------------------- downstream data

def downstream_data_params(cfg: PipelineConfig) -> dict:
    f = cfg.finetune
    return {"domain": f.domain, "num_samples": f.num_samples, "seed": f.seed}


def downstream_data_key(cfg: PipelineConfig, teacher: StageHandle) -> str:
    return stage_key("downstream_data", {**downstream_data_params(cfg), "negative_prompt": cfg.teacher.negative_prompt},
                     (teacher.key,))


def external_shards(folder: str | Path) -> StageHandle:
    """A handle on a user's shard folder (synthesis format), validated and keyed by its files."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"finetune.domain: {folder} is neither a toy domain ({', '.join(DOMAINS)}) "
                                "nor a shard folder")
    reader = ShardReader(folder)
    return StageHandle("downstream_data", folder_fingerprint(folder), str(folder),
                       {"num_samples": reader.num_samples, "external": True})


def run_downstream_data(cfg: PipelineConfig, teacher: StageHandle, parent_run_id: str | None = None) -> StageHandle:
    def build(out: Path, ctx: StageContext) -> dict:
        world = require_toy_world(teacher, f"finetune.domain={cfg.finetune.domain} (a toy domain)",
                                  "point finetune.domain at a shard folder instead")
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        return render_downstream_shards(model, world, out, domain=cfg.finetune.domain,
                                        num_samples=cfg.finetune.num_samples, seed=cfg.finetune.seed)

    return run_stage(cfg, "downstream_data", downstream_data_key(cfg, teacher), downstream_data_params(cfg),
                     parent_run_id, build, resumable=True)


@task(name="downstream_data", cache_key_fn=prefect_cache_key("downstream_data", downstream_data_key),
      persist_result=True)
def downstream_data(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle) -> StageHandle:
    return run_downstream_data(cfg, teacher, parent_run_id)


# ------------------------------------------------------------------------------------------- finetune

def finetune_loss(cfg: PipelineConfig) -> FlowMapLossSpec:
    """The stage-1 loss as fine-tuning uses it: always on its own data (the teacher does not know the new domain)."""
    return replace(loss_spec(cfg), velocity_target="data", target_guidance_scale=1.0)


def finetune_params(cfg: PipelineConfig) -> dict:
    params = {k: v for k, v in cfg.finetune.model_dump(mode="json").items() if k not in EVAL_ONLY}
    return {**params, "loss": loss_params(finetune_loss(cfg)), "gate_value": cfg.stage1.gate_value}


def finetune_key(cfg: PipelineConfig, teacher: StageHandle, student: StageHandle, data: StageHandle,
                 base: StageHandle, exported: StageHandle) -> str:
    f = cfg.finetune
    replay = () if f.replay_fraction == 0 else (exported.key,) if f.replay_source == "student" else (base.key,)
    return stage_key("finetune", {**finetune_params(cfg), "negative_prompt": cfg.teacher.negative_prompt},
                     (teacher.key, student.key, data.key) + replay)


def run_finetune(cfg: PipelineConfig, teacher: StageHandle, student: StageHandle, data: StageHandle,
                 base: StageHandle, exported: StageHandle, parent_run_id: str | None = None,
                 progress: bool = True) -> StageHandle:
    """`student`: the distilled student's training stage (its LoRA is continued); `exported`: the same student
    exported (it samples the replay data); `base`: the synthesis shards (replay_source: data)."""
    f = cfg.finetune

    def build(out: Path, ctx: StageContext) -> dict:
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        replay_dir = base.path
        if f.replay_fraction > 0 and f.replay_source == "student":
            world = toy_world_of(teacher.path) if cfg.teacher.source == "toy" else None
            prompts = load_prompts(cfg.synthesis.prompts, f.replay_samples, f.seed + 1, world)
            student_replay_shards(load_student(Path(exported.path) / exported.summary["model"]), model, prompts,
                                  out / "replay", nfe=f.replay_nfe, seed=f.seed + 1, progress=progress)
            replay_dir = out / "replay"
        loop = loop_spec(f, "finetune")
        _, summary = finetune_student(model, Path(student.path) / student.summary["lora"], data.path, out,
                                      loss=finetune_loss(cfg), loop=loop, batch_size=f.batch_size,
                                      gate_value=cfg.stage1.gate_value, replay_dir=replay_dir,
                                      replay_fraction=f.replay_fraction, anchor_weight=f.anchor_weight,
                                      anchor_nfe=f.anchor_nfe, extra_lora_targets=tuple(f.extra_lora_targets),
                                      log=ctx.log, progress=progress)
        summary.pop("losses")
        folder = export_lora_student(cfg, teacher, out / "lora.safetensors", out / "model",
                                     {"student": "finetune", "base_student_key": student.key,
                                      "data_key": data.key, "teacher_key": teacher.key})
        ctx.log_artifact(folder / "anyflow_export.json")
        return {**summary, "lora": "lora.safetensors", "model": folder.name}

    return run_stage(cfg, "finetune", finetune_key(cfg, teacher, student, data, base, exported), finetune_params(cfg),
                     parent_run_id, build, resumable=True)


@task(name="finetune", cache_key_fn=prefect_cache_key("finetune", finetune_key), persist_result=True)
def finetune(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, student: StageHandle,
             data: StageHandle, base: StageHandle, exported: StageHandle) -> StageHandle:
    return run_finetune(cfg, teacher, student, data, base, exported, parent_run_id)


# -------------------------------------------------------------------------------------- finetune_eval

def finetune_eval_params(cfg: PipelineConfig) -> dict:
    f = cfg.finetune
    return {"bench": f.bench_domain, "nfe_list": list(f.nfe_list), "base_nfe_list": list(f.base_nfe_list),
            "num_eval_prompts": f.num_eval_prompts, "seed": cfg.evaluation.seed}


def finetune_eval_key(cfg: PipelineConfig, teacher: StageHandle, before: StageHandle, after: StageHandle) -> str:
    return stage_key("finetune_eval", finetune_eval_params(cfg), (teacher.key, before.key, after.key))


def run_finetune_eval(cfg: PipelineConfig, teacher: StageHandle, before: StageHandle, after: StageHandle,
                      parent_run_id: str | None = None) -> StageHandle:
    p = finetune_eval_params(cfg)

    def build(out: Path, ctx: StageContext) -> dict:
        world = require_toy_world(teacher, "the before/after evaluation (the toy world's DownstreamBench)",
                                  "set finetune.enabled=false and evaluate the export yourself")
        models = {"before": load_student(Path(before.path) / before.summary["model"]),
                  "after": load_student(Path(after.path) / after.summary["model"])}
        bench = get_domain(p["bench"])
        rows, extra = compare_before_after(models, world, bench, tuple(p["nfe_list"]), p["num_eval_prompts"],
                                           p["seed"], tuple(p["base_nfe_list"]),
                                           progress=lambda msg: print(f"[finetune_eval] {msg}", flush=True))
        conds, real = extra["conditions"], extra["real_downstream_score"]
        summary = {"real_downstream_score": real, **before_after_summary(rows, extra["per_video"], p["seed"])}
        base4 = summary["base"].get("4")
        for r in rows:
            keys = ("score", *bench.items) if r["domain"] == "downstream" else ("total", "quality", "semantic")
            ctx.log({f"finetune/{r['domain']}/{r['model']}/{k}_nfe{r['nfe']}": r[k] for k in keys}, 0)
            ctx.log({f"finetune/{r['domain']}/{r['model']}/{keys[0]}": r[keys[0]]}, r["nfe"])
        ctx.log({"finetune/real_downstream_score": real}, 0)
        write_json_atomic(out / "table.json", rows)
        write_json_atomic(out / "comparison.json", summary)
        plot = plot_before_after(rows, out / "downstream_vs_nfe.png", real_score=real, measures=bench.measures)
        nfe = 4 if 4 in p["nfe_list"] else p["nfe_list"][0]
        sheet = contact_sheet({f"{m} ({nfe} NFE)": extra["videos"][("downstream", m, nfe)][:4] for m in models},
                              out / "downstream_samples.png", columns=[c.prompt for c in conds[:4]])
        for path in (plot, sheet, out / "table.json", out / "comparison.json"):
            ctx.log_artifact(path)
        headline = summary["downstream"][str(nfe)]
        ctx.tracker.set_tags(ctx.run_id, {"base_within_noise": str(summary["base_within_noise"]).lower()})
        return {"bench": bench.name, "table": "table.json", "plot": plot.name, "comparison": "comparison.json",
                "downstream_before": headline["before"], "downstream_after": headline["after"],
                "base_total_before": base4["before"] if base4 else None,
                "base_total_after": base4["after"] if base4 else None,
                "base_within_noise": summary["base_within_noise"], "real_downstream_score": real}

    return run_stage(cfg, "finetune_eval", finetune_eval_key(cfg, teacher, before, after), p, parent_run_id, build)


@task(name="finetune_eval", cache_key_fn=prefect_cache_key("finetune_eval", finetune_eval_key), persist_result=True)
def finetune_eval(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, before: StageHandle,
                  after: StageHandle) -> StageHandle:
    return run_finetune_eval(cfg, teacher, before, after, parent_run_id)
