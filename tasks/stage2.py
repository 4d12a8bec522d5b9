"""Stage 2 task: on-policy flow-map distillation of the stage-1 student (recipe §7). Resumable from its
checkpoints in the stage's `.partial` directory."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from anyflow.stage2 import Stage2Spec, train_stage2
from anyflow.training import LoopSpec
from anyflow.wan import load_teacher
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, stage_key
from tasks.stage1 import EXECUTION_ONLY, loss_spec
from tasks.stagerun import StageContext, prefect_cache_key, run_stage


def stage2_params(cfg: PipelineConfig) -> dict:
    return {**cfg.stage2.model_dump(mode="json"), "stage1_loss": loss_spec(cfg).__dict__}


def stage2_key(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, student: StageHandle) -> str:
    params = {k: v for k, v in stage2_params(cfg).items() if k not in EXECUTION_ONLY}
    return stage_key("stage2", {**params, "negative_prompt": cfg.teacher.negative_prompt},
                     (teacher.key, data.key, student.key))


def run_stage2(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, student: StageHandle,
               parent_run_id: str | None = None, progress: bool = True) -> StageHandle:
    c = cfg.stage2
    if c.teacher_tune:
        raise ValueError("stage2.teacher_tune=true: the optional teacher LoRA tuning (reference stage 0) is not "
                         "implemented yet; set stage2.teacher_tune=false to distil from the teacher as given")

    def build(out: Path, ctx: StageContext) -> dict:
        model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
        spec = Stage2Spec(rollout_budgets=tuple(c.rollout_budgets), real_guidance_scale=c.real_guidance_scale,
                          dmd_weight=c.dmd_weight, flowmap_weight=c.flowmap_weight,
                          generator_every=c.critic_updates_per_generator_update, shift=cfg.stage1.shift)
        loop = LoopSpec(num_steps=c.num_steps, lr=c.lr, betas=tuple(c.betas), grad_clip=c.grad_clip,
                        ema_decay=c.ema_decay, ema_start_step=c.ema_start_step, checkpoint_every=c.checkpoint_every,
                        seed=c.seed, name="stage2")
        _, summary = train_stage2(model, Path(student.path) / student.summary["lora"], data.path, out,
                                  critic_lora=c.critic_lora, loss=loss_spec(cfg), spec=spec, loop=loop,
                                  generator_lr=c.lr, critic_lr=c.critic_lr, betas=tuple(c.betas),
                                  batch_size=c.batch_size, gate_value=cfg.stage1.gate_value, log=ctx.log,
                                  progress=progress, gradient_checkpointing=c.gradient_checkpointing)
        summary.pop("losses")
        return {**summary, "lora": "lora.safetensors"}

    return run_stage(cfg, "stage2", stage2_key(cfg, teacher, data, student), stage2_params(cfg), parent_run_id,
                     build, resumable=True)


@task(name="stage2", cache_key_fn=prefect_cache_key("stage2", stage2_key), persist_result=True)
def stage2(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, data: StageHandle,
           student: StageHandle) -> StageHandle:
    return run_stage2(cfg, teacher, data, student, parent_run_id)
