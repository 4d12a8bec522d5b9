"""Teacher-tune task (optional; the reference's stage 0, recipe §5): LoRA flow matching of the teacher on the
synthesized shards. Resumable from its checkpoints in the stage's `.partial` directory. Stage 2 merges the
LoRA into a copy of the teacher for its real score and critic."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from anyflow.teacher_tune import TeacherTuneSpec, tune_teacher
from anyflow.wan import load_teacher
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, stage_key
from tasks.stage1 import EXECUTION_ONLY
from tasks.stagerun import StageContext, loop_spec, prefect_cache_key, run_stage


def teacher_tune_params(cfg: PipelineConfig) -> dict:
    return cfg.teacher_tune.model_dump(mode="json")


def teacher_tune_key(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle) -> str:
    params = {k: v for k, v in teacher_tune_params(cfg).items() if k not in EXECUTION_ONLY}
    return stage_key("teacher_tune", {**params, "negative_prompt": cfg.teacher.negative_prompt},
                     (teacher.key, data.key))


def run_teacher_tune(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, parent_run_id: str | None = None,
                     progress: bool = True) -> StageHandle:
    c = cfg.teacher_tune

    def build(out: Path, ctx: StageContext) -> dict:
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        loop = loop_spec(c, "teacher_tune")
        spec = TeacherTuneSpec(shift=c.shift, text_dropout=c.text_dropout)
        _, summary = tune_teacher(model, data.path, out, lora=c.lora, spec=spec, loop=loop, batch_size=c.batch_size,
                                  log=ctx.log, progress=progress, gradient_checkpointing=c.gradient_checkpointing)
        losses = summary.pop("losses")
        return {**summary, "lora": "lora.safetensors", "initial_loss": sum(losses[:20]) / max(len(losses[:20]), 1)}

    return run_stage(cfg, "teacher_tune", teacher_tune_key(cfg, teacher, data), teacher_tune_params(cfg),
                     parent_run_id, build, resumable=True)


@task(name="teacher_tune", cache_key_fn=prefect_cache_key("teacher_tune", teacher_tune_key), persist_result=True)
def teacher_tune(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle,
                 data: StageHandle) -> StageHandle:
    return run_teacher_tune(cfg, teacher, data, parent_run_id)
