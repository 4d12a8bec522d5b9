"""Benchmark the toy teacher: build time, and parsed attribute accuracy vs the prompt at several step counts.

    .venv/bin/python bench/teacher.py [--preset toy] [--set KEY=VALUE ...] [--num-prompts 128] [--steps 50,8,4,2,1]

Builds (or re-uses, if cached) the teacher through the same task the pipeline uses, loads it with the
standard `WanPipeline.from_pretrained` + `pipe(prompt, height, width, num_frames, num_inference_steps,
guidance_scale, output_type="np")` call, parses every video with the rule-based toy parser and prints a
table (accuracy per attribute and step count). Same noise across step counts (one seeded generator per run).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from diffusers import WanPipeline

import anyflow  # noqa: F401  (registers the toy VAE class for from_pretrained)
import conf
from anyflow import toyworld
from anyflow.toyparser import parse_batch
from tasks.teacher import build_teacher

ATTRIBUTES = ("colour", "shape", "direction", "background", "count")


def accuracy(conds: list[toyworld.Condition], videos: np.ndarray, spec: toyworld.WorldSpec) -> dict[str, float]:
    parsed = parse_batch(videos, spec)
    hits = {a: [] for a in ATTRIBUTES}
    for c, p in zip(conds, parsed):
        hits["colour"].append(p.colour == c.colour)
        hits["shape"].append(p.shape == c.shape)
        hits["direction"].append(p.direction == c.direction)
        hits["background"].append(p.background == c.background)
        hits["count"].append(p.count == 1)
    return {a: float(np.mean(v)) for a, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--num-prompts", type=int, default=128)
    ap.add_argument("--steps", default="50,8,4,2,1")
    ap.add_argument("--guidance-scale", type=float, help="default: the preset's synthesis.guidance_scale")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = conf.load(args.preset, args.overrides)
    if args.guidance_scale is None:
        args.guidance_scale = cfg.synthesis.guidance_scale
    handle = build_teacher(cfg)
    spec = cfg.teacher.toy.world
    pipe = WanPipeline.from_pretrained(handle.path)
    pipe.set_progress_bar_config(disable=True)
    conds = toyworld.sample_conditions(args.num_prompts, args.seed, "base", spec)
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        start = time.time()
        videos = pipe([c.prompt for c in conds], height=spec.height, width=spec.width, num_frames=spec.num_frames,
                      num_inference_steps=steps, guidance_scale=args.guidance_scale,
                      generator=torch.Generator().manual_seed(args.seed), output_type="np").frames
        rows.append({"steps": steps, "nfe": steps * (2 if args.guidance_scale > 1 else 1),
                     **accuracy(conds, videos, spec), "sample_s": round(time.time() - start, 1)})

    print(f"\nteacher {handle.path}\n  build: {handle.summary.get('seconds')} s "
          f"(cache hit: {handle.summary['cache_hit']}), final loss {handle.summary.get('final_loss'):.4f}")
    print(f"  {args.num_prompts} prompts, CFG {args.guidance_scale}, parsed attribute accuracy vs the prompt:\n")
    print("| steps | NFE | " + " | ".join(ATTRIBUTES) + " | sampling s |")
    print("|---" * (len(ATTRIBUTES) + 3) + "|")
    for r in rows:
        print(f"| {r['steps']} | {r['nfe']} | " + " | ".join(f"{r[a]:.1%}" for a in ATTRIBUTES) + f" | {r['sample_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"teacher": handle.path, "build": handle.summary, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
