"""Stage 1 task: forward flow-map training of the student on the synthesized shards (recipe §6).
Resumable: its checkpoints live in the stage's `.partial` directory until the stage completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import task

from anyflow.stage1 import FlowMapLossSpec, train_stage1
from anyflow.training import LoopSpec
from anyflow.wan import load_teacher
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, stage_key
from tasks.stagerun import StageContext, loop_spec, prefect_cache_key, run_stage


# Settings that change how a stage computes, not what it computes: logged, but not part of the cache key.
EXECUTION_ONLY = frozenset({"gradient_checkpointing"})


def stage1_params(cfg: PipelineConfig) -> dict:
    params = cfg.stage1.model_dump(mode="json")
    # the defaults of later-added fields keep the keys that runs had before them
    if params["num_processes"] == 1:
        del params["num_processes"]
    if params["velocity_target"] == "data":
        del params["velocity_target"]
    return params


def stage1_key(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle) -> str:
    params = {k: v for k, v in stage1_params(cfg).items() if k not in EXECUTION_ONLY}
    return stage_key("stage1", {**params, "negative_prompt": cfg.teacher.negative_prompt},
                     (teacher.key, data.key))


def loss_spec(cfg: PipelineConfig) -> FlowMapLossSpec:
    s = cfg.stage1
    return FlowMapLossSpec(diffusion_ratio=s.diffusion_ratio, consistency_ratio=s.consistency_ratio,
                           fused_guidance_scale=s.fused_guidance_scale, fd_delta=s.fd_delta,
                           adaptive_c=s.adaptive_c, shift=s.shift, text_dropout=s.text_dropout,
                           velocity_target=s.velocity_target, target_guidance_scale=cfg.synthesis.guidance_scale)


def loss_params(spec: FlowMapLossSpec) -> dict:
    """A loss spec as cache-key parameters. The data target (the default) adds no fields, so keys made before
    `velocity_target` existed still match."""
    params = dict(spec.__dict__)
    if spec.velocity_target == "data":
        del params["velocity_target"], params["target_guidance_scale"]
    return params


def stage1_loop(cfg: PipelineConfig) -> LoopSpec:
    return loop_spec(cfg.stage1, "stage1")


def run_stage1(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, parent_run_id: str | None = None,
               progress: bool = True) -> StageHandle:
    def build(out: Path, ctx: StageContext) -> dict:
        if cfg.stage1.num_processes > 1:
            summary = _launch(cfg, teacher, data, out, ctx)
        else:
            model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
            _, summary = train_stage1(model, data.path, out, lora=cfg.stage1.lora, loss=loss_spec(cfg),
                                      loop=stage1_loop(cfg), batch_size=cfg.stage1.batch_size,
                                      gate_value=cfg.stage1.gate_value, log=ctx.log, progress=progress,
                                      gradient_checkpointing=cfg.stage1.gradient_checkpointing)
        losses = summary.pop("losses")
        return {**summary, "lora": "lora.safetensors", "initial_loss": sum(losses[:20]) / max(len(losses[:20]), 1)}

    return run_stage(cfg, "stage1", stage1_key(cfg, teacher, data), stage1_params(cfg), parent_run_id, build,
                     resumable=True)


def _launch(cfg: PipelineConfig, teacher: StageHandle, data: StageHandle, out: Path, ctx: StageContext) -> dict:
    """Run stage 1 in `num_processes` processes through `accelerate launch` (its multi-process launcher, i.e.
    torch.distributed.run: gloo on CPU, NCCL on GPUs), then log rank 0's metrics."""
    out.mkdir(parents=True, exist_ok=True)
    job = out / "job.json"
    job.write_text(json.dumps({"config": cfg.model_dump(mode="json"), "teacher": teacher.path, "data": data.path,
                               "out": str(out)}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", str(cfg.stage1.num_processes), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tasks.stage1_worker", str(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"multi-process stage 1 failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-4000:]}")
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        ctx.log({k: v for k, v in m.items() if k != "step"}, m["step"])
    return json.loads((out / "summary.json").read_text())


@task(name="stage1", cache_key_fn=prefect_cache_key("stage1", stage1_key), persist_result=True)
def stage1(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, data: StageHandle) -> StageHandle:
    return run_stage1(cfg, teacher, data, parent_run_id)
