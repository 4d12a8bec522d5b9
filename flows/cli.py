"""Command line: `python -m flows run --preset toy [--set stage1.lr=1e-4 ...] [--dry-run]`, and
`python -m flows sample STUDENT_FOLDER --prompt "..." --nfe 1,4,32` for an exported student.

Stages wired so far: teacher (the toy teacher is built and cached; a real Wan folder is validated).
The later stages (synthesis, stage 1, stage 2, export, evaluation, fine-tuning) join as they land.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import conf
from tasks.teacher import build_teacher, teacher_location

STAGES = ("teacher",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline for a preset")
    run.add_argument("--preset", default="toy", help=f"preset name ({', '.join(conf.available_presets())}) or YAML path")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set stage1.lr=1e-4 (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and the stage plan, run nothing")
    run.add_argument("--summary-json", type=Path, help="write a machine-readable run summary here")
    sample = sub.add_parser("sample", help="sample an exported AnyFlow student at several NFEs (GIFs + contact sheet)")
    sample.add_argument("student", type=Path, help="an exported student folder (AnyFlowPipeline)")
    sample.add_argument("--prompt", dest="prompts", action="append", required=True, help="a prompt (repeatable)")
    sample.add_argument("--nfe", default="1,4,32", help="comma-separated step counts (default 1,4,32)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default ./samples)")
    return p


def _plan(cfg: conf.PipelineConfig) -> list[tuple[str, str, bool]]:
    folder, ready = teacher_location(cfg)
    return [("teacher", str(folder), ready)]


def run(args: argparse.Namespace) -> int:
    cfg = conf.load(args.preset, args.overrides)
    if args.dry_run:
        print(conf.to_yaml(cfg))
        print("stage plan:")
        for stage, path, cached in _plan(cfg):
            print(f"  {stage:10s} {'cached' if cached else 'to run':8s} {path}")
        return 0
    print(f"[anyflow] preset {args.preset!r}: building the teacher ({cfg.teacher.source})", flush=True)
    teacher = build_teacher(cfg)
    status = "cache hit" if teacher.summary.get("cache_hit") else f"built in {teacher.summary.get('seconds')} s"
    print(f"[anyflow] teacher ({status}): {teacher.path}")
    print(f"[anyflow] load it with: WanPipeline.from_pretrained({teacher.path!r})")
    if args.summary_json:
        summary = {"preset": args.preset, "stages": {"teacher": {"path": teacher.path, "key": teacher.key, **teacher.summary}}}
        args.summary_json.write_text(json.dumps(summary, indent=2))
    return 0


def sample(args: argparse.Namespace) -> int:
    from tasks.sample import sample_student

    try:
        nfes = [int(n) for n in args.nfe.split(",")]
    except ValueError:
        raise conf.ConfigError(f"--nfe {args.nfe!r}: expected comma-separated integers like 1,4,32") from None
    if any(n < 1 for n in nfes):
        raise conf.ConfigError(f"--nfe {args.nfe!r}: step counts must be >= 1")
    sheet = sample_student(args.student, args.prompts, nfes, args.seed, args.out)
    print(f"[anyflow] samples in {args.out} (contact sheet: {sheet})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args) if args.command == "run" else sample(args)
    except conf.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
