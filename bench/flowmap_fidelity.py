"""How exact is an exported student's flow map? Per-jump errors against the teacher's ODE, and the student sampled
with its flow map vs Euler on its own velocity.

    .venv/bin/python bench/flowmap_fidelity.py STUDENT_FOLDER [--preset toy] [--set KEY=VALUE ...]
        [--steps 4,32] [--jump-prompts 32] [--substeps 64] [--score-nfe 4,8,16,32] [--json out.json]

Table 1 (`anyflow.flowmap.jump_errors`): on the teacher's own CFG trajectory (guidance evaluation.teacher_guidance_
scale), for every interval σ_i -> σ_{i+1} of the N-step grid, the relative error of the student's jump
u(z, σ_i, σ_{i+1}) against the true average velocity (a `--substeps`-step solve of the teacher's ODE), beside
Euler on the student's velocity u(z, σ_i, σ_i) and Euler on the teacher's. An exact flow map of the teacher
scores 0; a map no better than Euler has not learned its jumps (or learned other ones: stage 2's DMD trains
the distribution of its samples, not the teacher's jumps).

Table 2: ToyBench Total of the student at each NFE with its flow map (what the evaluation scores) and with Euler
on its own velocity u(z, t, t), on the evaluation's prompts and common noise, with the paired 95% CI of the
difference. Where Euler on the velocity wins, the jumps are what hold the student back, not its velocity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import conf
from anyflow.evaluation import ToyPrompts, bootstrap_ci, student_sampler
from anyflow.export import load_student
from anyflow.flowmap import classifier_free_guidance, jump_errors, sample_euler
from anyflow.student import average_velocity
from anyflow.guidance import cond_uncond_velocity
from anyflow.toybuild import toy_world_of
from anyflow.wan import load_teacher
from tasks.evaluate import sweep_spec
from tasks.teacher import build_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("student", help="an exported student folder (export/<key>/model)")
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", default="4,32", help="grids whose jumps table 1 checks")
    ap.add_argument("--jump-prompts", type=int, default=32)
    ap.add_argument("--substeps", type=int, default=64, help="teacher Euler steps per interval for the true jump")
    ap.add_argument("--score-nfe", default="4,8,16,32", help="table 2's NFEs ('' skips it)")
    ap.add_argument("--json", help="also write both tables here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = conf.load(args.preset, args.overrides)
    spec = sweep_spec(cfg)
    handle = build_teacher(cfg)
    world = toy_world_of(handle.path)
    if world is None:
        raise SystemExit(f"{handle.path} is not a toy teacher: this benchmark scores toy-world students (ToyBench)")
    teacher = load_teacher(handle.path, cfg.teacher.negative_prompt)
    student = load_student(Path(args.student)).pipe.transformer.eval()
    uncond = teacher.uncond_embedding()
    out: dict = {"student": args.student, "teacher": handle.path, "jumps": {}, "scores": []}

    with torch.no_grad():
        jump = ToyPrompts.build(teacher, world, args.jump_prompts, spec.seed)
        text, noise = jump.text, jump.noise

        v_teacher = lambda z, t: classifier_free_guidance(
            *cond_uncond_velocity(teacher.transformer, z, t, text, uncond), spec.teacher_guidance_scale)
        u_student = lambda z, t, r: average_velocity(student, z, t, r, text)
        print(f"Table 1: relative error of each jump vs the teacher's ODE (CFG {spec.teacher_guidance_scale}, "
              f"{args.jump_prompts} prompts, {args.substeps} substeps)\n")
        print("| grid | σ_i -> σ_i+1 | student flow map | Euler, student velocity | Euler, teacher velocity |")
        print("|---|---|---|---|---|")
        for n in (int(s) for s in args.steps.split(",")):
            rows = jump_errors(u_student, v_teacher, noise, n, spec.shift, args.substeps)
            out["jumps"][n] = rows
            for r in rows:
                print(f"| {n} | {r['t']:.3f} -> {r['r']:.3f} | {r['flow_map']:.4f} | {r['own_velocity_euler']:.4f} | "
                      f"{r['euler']:.4f} |", flush=True)

        nfes = [int(s) for s in args.score_nfe.split(",") if s]
        if nfes:
            prompts = ToyPrompts.build(teacher, world, spec.num_prompts, spec.seed)
            score = lambda lat: prompts.score(teacher, lat)[:2]
            euler = lambda nz, tx, steps: sample_euler(lambda z, t: average_velocity(student, z, t, t, tx), nz, steps,
                                                       spec.shift)
            print(f"\nTable 2: ToyBench Total, {spec.num_prompts} prompts, common noise, grid shift {spec.shift}\n")
            print("| NFE | flow map | Euler on u(z, t, t) | Euler - flow map [95% CI] |\n|---|---|---|---|")
            for n in nfes:
                fm, pf = score(prompts.sample(student_sampler(student, spec.shift), n, spec.batch_size))
                eu, pe = score(prompts.sample(euler, n, spec.batch_size))
                _, lo, hi = bootstrap_ci(pe - pf, spec.bootstrap_samples, spec.seed)
                out["scores"].append({"nfe": n, "flow_map": fm["total"], "own_velocity_euler": eu["total"],
                                      "diff_ci": [lo, hi]})
                print(f"| {n} | {fm['total']:.3f} | {eu['total']:.3f} | {eu['total'] - fm['total']:+.3f} "
                      f"[{lo:+.3f}, {hi:+.3f}] |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
