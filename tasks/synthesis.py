"""Synthesis stage: the teacher's CFG ODE over the configured prompts → webdataset shards + manifest.

Resumable: a killed run leaves its finished shards in the stage's `.partial` directory and the next run
continues after the last verified shard (anyflow.shards)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from anyflow.prompts import load_prompts
from anyflow.synthesis import synthesize
from anyflow.toybuild import toy_world_of
from anyflow.wan import load_teacher, teacher_video_size
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, stage_key
from tasks.stagerun import StageContext, prefect_cache_key, run_stage


def synthesis_key(cfg: PipelineConfig, teacher: StageHandle) -> str:
    return stage_key("synthesis", synthesis_params(cfg), (teacher.key,))


def synthesis_params(cfg: PipelineConfig) -> dict:
    return {**cfg.synthesis.model_dump(mode="json"), "negative_prompt": cfg.teacher.negative_prompt}


def run_synthesis(cfg: PipelineConfig, teacher: StageHandle, parent_run_id: str | None = None,
                  progress: bool = True) -> StageHandle:
    sc = cfg.synthesis

    def build(out: Path, ctx: StageContext) -> dict:
        prompts = load_prompts(sc.prompts, sc.num_samples, sc.seed, toy_world_of(teacher.path))
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        summary = synthesize(
            model, prompts, out, num_inference_steps=sc.num_inference_steps, guidance_scale=sc.guidance_scale,
            batch_size=sc.batch_size, samples_per_shard=sc.samples_per_shard, seed=sc.seed,
            video=teacher_video_size(teacher.path), latent_dtype=sc.latent_dtype,
            settings={"teacher": teacher.path, "teacher_key": teacher.key, "prompts": sc.prompts},
            log=ctx.log, progress=progress)
        ctx.log_artifact(out / "manifest.parquet")
        return summary

    return run_stage(cfg, "synthesis", synthesis_key(cfg, teacher), synthesis_params(cfg), parent_run_id, build,
                     resumable=True)


@task(name="synthesis", cache_key_fn=prefect_cache_key("synthesis", synthesis_key), persist_result=True)
def synthesis(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle) -> StageHandle:
    return run_synthesis(cfg, teacher, parent_run_id)
