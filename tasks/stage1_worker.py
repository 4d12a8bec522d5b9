"""One process of a multi-process stage 1, started by the stage-1 task through `accelerate launch`:

    accelerate launch --multi_gpu --num_processes P -m tasks.stage1_worker JOB.json   (CPU too: gloo)

Rank 0 writes the metrics (`metrics.jsonl`) and the summary (`summary.json`) into the job's output folder;
the task logs them to MLflow (only the parent process talks to MLflow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from anyflow.lora import lora_parameters
from anyflow.stage1 import train_stage1
from anyflow.wan import load_teacher
from conf import validate
from tasks.stage1 import loss_spec, stage1_loop


@record   # a failing rank's traceback goes into the launcher's failure summary (the end of stderr)
def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    cfg = validate(job["config"], source=job_path)
    out = Path(job["out"])
    metrics = []
    teacher = load_teacher(job["teacher"], negative_prompt=cfg.teacher.negative_prompt)
    student, summary = train_stage1(teacher, job["data"], out, lora=cfg.stage1.lora, loss=loss_spec(cfg),
                                    loop=stage1_loop(cfg), batch_size=cfg.stage1.batch_size,
                                    gate_value=cfg.stage1.gate_value,
                                    log=lambda m, s: metrics.append({"step": s, **m}), progress=False,
                                    gradient_checkpointing=cfg.stage1.gradient_checkpointing)
    # every process must end with the same weights (DDP keeps them in sync): record each one's checksum
    checksum = torch.tensor([float(sum(p.detach().double().sum() for p in lora_parameters(student)))], dtype=torch.float64)
    if dist.is_initialized():
        sums = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(sums, checksum)
        summary["weight_checksums"] = [float(x) for x in sums]
    if not dist.is_initialized() or dist.get_rank() == 0:
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        (out / "summary.json").write_text(json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
