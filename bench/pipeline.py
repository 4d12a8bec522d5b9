"""Benchmark the pipeline's spine: synthesis throughput, shard read throughput against what training
consumes, and the wall time of a fully cached re-run.

    .venv/bin/python bench/pipeline.py [--preset toy] [--root runs] [--set KEY=VALUE ...]

1. Runs `python -m flows run --preset P` (builds what is missing), then runs it again and times the second,
   fully cached invocation end to end (process start, Prefect ephemeral server, MLflow, cache checks).
2. Synthesis samples/s: from the synthesis stage's summary (measured when it was built).
3. Shard read samples/s: `ShardReader.batches` over the synthesized shards (decode + collate + pad), at
   the stage-1 batch size.
4. Training consumption samples/s: a stage-1 step's model work on the toy student (1 forward+backward and
   3 no-grad forwards: the fused-guidance branch and the two finite-difference evaluations, recipe §6),
   i.e. batch_size / step_time. The read rate must exceed it >= 10x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import conf


def run_pipeline(preset: str, overrides: list[str], summary: Path) -> float:
    cmd = [sys.executable, "-m", "flows", "run", "--preset", preset, "--summary-json", str(summary)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - start


def read_rate(data_dir: str, batch_size: int, batches: int = 40) -> float:
    from anyflow.shards import ShardReader

    reader = ShardReader(data_dir)
    it = reader.batches(batch_size, seed=0)
    next(it)                                          # warm-up (first shard open)
    start = time.time()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.time() - start)


def consumption_rate(teacher_dir: str, data_dir: str, batch_size: int, steps: int = 5) -> float:
    from anyflow.shards import ShardReader
    from anyflow.student import average_velocity, student_from_teacher
    from anyflow.wan import load_teacher

    student = student_from_teacher(load_teacher(teacher_dir).transformer).train()
    student.requires_grad_(True)
    batch = next(ShardReader(data_dir).batches(batch_size, seed=0))
    z, text = batch.latents, batch.prompt_embeds
    t, r = torch.full((batch_size,), 0.7), torch.full((batch_size,), 0.3)
    times = []
    for _ in range(steps + 1):
        start = time.time()
        average_velocity(student, z, t, r, text).square().mean().backward()
        with torch.no_grad():
            for _ in range(3):
                average_velocity(student, z, t, r, text)
        times.append(time.time() - start)
    return batch_size / (sum(times[1:]) / steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="toy")
    p.add_argument("--root", default="runs")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    overrides = [f"paths.root={args.root}", *args.overrides]
    cfg = conf.load(args.preset, overrides)
    torch.set_num_threads(2)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    first = run_pipeline(args.preset, overrides, root / "bench-summary-1.json")
    cached = run_pipeline(args.preset, overrides, root / "bench-summary-2.json")
    summary = json.loads((root / "bench-summary-2.json").read_text())
    syn = summary["stages"]["synthesis"]
    reads = read_rate(syn["path"], cfg.stage1.batch_size)
    consumes = consumption_rate(summary["stages"]["teacher"]["path"], syn["path"], cfg.stage1.batch_size)
    rows = [
        ("first run wall (s, builds what is missing)", f"{first:.1f}"),
        ("fully cached re-run wall (s)", f"{cached:.1f}"),
        ("stages cached on re-run", f"{sum(s['cache_hit'] for s in summary['stages'].values())}/{len(summary['stages'])}"),
        ("synthesis samples/s (at build)", f"{syn['samples_per_s']}"),
        (f"shard read samples/s (batch {cfg.stage1.batch_size})", f"{reads:.0f}"),
        ("stage-1 model consumption samples/s", f"{consumes:.1f}"),
        ("read / consumption", f"{reads / consumes:.0f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\npreset {args.preset} ({torch.get_num_threads()} threads)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
