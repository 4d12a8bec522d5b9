"""Score a toy teacher on ToyBench: Euler + CFG at several NFE and the 50-step reference, the evaluation's protocol.

    .venv/bin/python bench/teacher_toybench.py [--preset toy] [--set KEY=VALUE ...] [--nfe 4,8,16,32]
                                               [--num-prompts 128] [--json out.json]

Builds (or re-uses, if cached) the teacher through the pipeline's task, exactly like bench/teacher.py, then runs
`anyflow.evaluation.toy_sweep` with the teacher's Euler sampler only: the same prompts, common noise, guidance
(evaluation.teacher_guidance_scale), time shift and bootstrap CIs as the pipeline's evaluation stage, so a
candidate teacher's curve compares directly with the README's table. This is what tells whether a teacher that
parses well (bench/teacher.py) is also one worth distilling: what falls past 16 NFE in the shipped teacher is
ToyBench's distribution and sharpness items, which the parser does not see.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import conf
from anyflow.evaluation import teacher_sampler, toy_sweep
from anyflow.wan import load_teacher
from tasks.evaluate import sweep_spec
from tasks.teacher import build_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--nfe", default="4,8,16,32", help="even NFE counts (CFG costs two per Euler step)")
    ap.add_argument("--num-prompts", type=int, help="default: the preset's evaluation.num_prompts")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = conf.load(args.preset, args.overrides)
    nfes = tuple(int(n) for n in args.nfe.split(","))
    if any(n < 2 or n % 2 for n in nfes):
        raise SystemExit(f"--nfe: every NFE must be even and >= 2 (two evaluations per CFG Euler step), got {args.nfe}")
    spec = dataclasses.replace(sweep_spec(cfg), nfe_list=nfes,
                               num_prompts=args.num_prompts or cfg.evaluation.num_prompts)
    handle = build_teacher(cfg)
    teacher = load_teacher(handle.path, cfg.teacher.negative_prompt)
    sampler = teacher_sampler(teacher, teacher.uncond_embedding(), spec.teacher_guidance_scale, spec.shift)
    start = time.time()
    result = toy_sweep({"teacher_euler": sampler}, teacher, spec, cfg.teacher.toy.world,
                       progress=lambda msg: print(f"[toybench] {msg}", flush=True))

    print(f"\nteacher {handle.path} (build {handle.summary.get('seconds')} s, cache hit {handle.summary['cache_hit']})")
    print(f"  {spec.num_prompts} prompts, CFG {spec.teacher_guidance_scale}, shift {spec.shift}, "
          f"scored in {time.time() - start:.0f} s\n")
    print("| sampler | NFE | Total [95% CI] | distribution | sharpness ratio |\n|---|---|---|---|---|")
    for r in result.rows:
        print(f"| {r['model']} | {r['nfe']} | {r['total']:.3f} [{r['total_ci_lo']:.3f}, {r['total_ci_hi']:.3f}] | "
              f"{r.get('distribution', float('nan')):.3f} | {r.get('sharpness_ratio', float('nan')):.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"teacher": handle.path, "build": handle.summary, "rows": result.rows}, f, indent=2, default=float)


if __name__ == "__main__":
    main()
