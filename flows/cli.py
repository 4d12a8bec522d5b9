"""Command line.

    python -m flows run --preset toy [--set stage1.lr=1e-4 ...] [--dry-run] [--summary-json PATH]
    python -m flows serve --preset toy --cron "0 3 * * *" [--name nightly]     (needs a Prefect server)
    python -m flows evaluate STUDENT_FOLDER [--preset toy] [--set ...]       (score any exported student)
    python -m flows sample STUDENT_FOLDER --prompt "..." --nfe 1,4,32
    python -m flows teacher-asset [--preset toy] [--set ...] [--out assets/toy-teacher]

`run` executes the Prefect pipeline flow (stages cached and resumable, tracked in MLflow); `--dry-run`
prints the resolved config and the stage plan, computing nothing. `teacher-asset` trains the preset's toy
teacher (or re-uses its cached build) and packs it as the prebuilt asset that `run` installs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import conf


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows", description="AnyFlow distillation pipeline")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the pipeline for a preset"),
                            ("serve", "serve the pipeline as a scheduled Prefect deployment"),
                            ("evaluate", "score an exported student folder against the teacher's baselines"),
                            ("teacher-asset", "build the preset's toy teacher and pack it as the prebuilt asset")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--preset", default="toy",
                         help=f"preset name ({', '.join(conf.available_presets())}) or YAML path")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set stage1.lr=1e-4 (repeatable)")
        if name == "evaluate":
            cmd.add_argument("student", type=Path, help="an exported student folder (AnyFlowPipeline)")
        if name in ("run", "evaluate"):
            cmd.add_argument("--summary-json", type=Path, help="write a machine-readable run summary here")
        if name == "run":
            cmd.add_argument("--dry-run", action="store_true",
                             help="print the resolved config and the stage plan, run nothing")
        elif name == "teacher-asset":
            cmd.add_argument("--out", type=Path, help="where to write it (default: the repository's assets/toy-teacher, "
                                                      "which `run` installs from)")
        elif name == "serve":
            cmd.add_argument("--cron", default="0 3 * * *", help="cron schedule (default: daily at 03:00)")
            cmd.add_argument("--name", default=None, help="deployment name (default: <preset>-scheduled)")
    sample = sub.add_parser("sample", help="sample an exported AnyFlow student at any NFE (mp4/GIF, contact sheet)")
    sample.add_argument("student", type=Path, nargs="?", help="an exported student folder (or --model)")
    sample.add_argument("--model", type=Path, help="an exported student folder (AnyFlowPipeline)")
    sample.add_argument("--prompt", dest="prompts", action="append", required=True, help="a prompt (repeatable)")
    sample.add_argument("--nfe", default="1,4,32", help="comma-separated step counts (default 1,4,32)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--fps", type=int, default=8)
    sample.add_argument("--out", type=Path, default=Path("samples"),
                        help="a video file (.mp4 or .gif; one per prompt and NFE, numbered when there are several) "
                             "or a folder of GIFs + contact sheet (default ./samples)")
    return p


def configure_environment(cfg: conf.PipelineConfig) -> None:
    """Offline-safe defaults, set before Prefect or MLflow is imported (they read settings at import)."""
    root = Path(cfg.paths.root).resolve()
    defaults = {"PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)   # Prefect does not create parents


def plan(cfg: conf.PipelineConfig) -> list[tuple[str, str, str]]:
    """(stage, artifact directory, "cached" | "prebuilt" | "to run") for each wired stage, computing nothing."""
    from tasks.artifacts import StageHandle, read_manifest, stage_dir
    from tasks.evaluate import evaluate_key
    from tasks.export import export_key
    from tasks.stage1 import stage1_key
    from tasks.stage2 import stage2_key
    from tasks.synthesis import synthesis_key
    from tasks.teacher import prebuilt_available, teacher_key, teacher_location
    from tasks.teacher_tune import teacher_tune_key

    folder, ready = teacher_location(cfg)
    rows = [("teacher", str(folder), "cached" if ready else "prebuilt" if prebuilt_available(cfg) else "to run")]
    handles = {"teacher": StageHandle("teacher", teacher_key(cfg), str(folder), {})}
    tune = cfg.teacher_tune.enabled
    chain = (("synthesis", lambda h: synthesis_key(cfg, h["teacher"])),
             *((("teacher_tune", lambda h: teacher_tune_key(cfg, h["teacher"], h["synthesis"])),) if tune else ()),
             ("stage1", lambda h: stage1_key(cfg, h["teacher"], h["synthesis"])),
             ("stage2", lambda h: stage2_key(cfg, h["teacher"], h["synthesis"], h["stage1"], h.get("teacher_tune"))),
             ("export", lambda h: export_key(cfg, h["teacher"], h["stage2"])),
             ("evaluate", lambda h: evaluate_key(cfg, h["teacher"], h["export"])))
    if cfg.finetune.enabled:
        from tasks.finetune import downstream_data_key, external_shards, finetune_eval_key, finetune_key
        if cfg.finetune.renders_toy_domain:
            chain += (("downstream_data", lambda h: downstream_data_key(cfg, h["teacher"])),)
        else:
            handles["downstream_data"] = external_shards(cfg.finetune.domain)
        chain += (("finetune", lambda h: finetune_key(cfg, h["teacher"], h["stage2"], h["downstream_data"],
                                                      h["synthesis"], h["export"])),
                  ("finetune_eval", lambda h: finetune_eval_key(cfg, h["teacher"], h["export"], h["finetune"])))
    for stage, key_fn in chain:     # keys chain through upstream keys, so the plan needs no artifacts
        key = key_fn(handles)
        handles[stage] = StageHandle(stage, key, "", {})
        path = stage_dir(cfg.paths.artifacts, stage, key)
        rows.append((stage, str(path), "cached" if read_manifest(path) is not None else "to run"))
    return rows


def run(args: argparse.Namespace) -> int:
    cfg = conf.load(args.preset, args.overrides)
    configure_environment(cfg)
    if args.dry_run:
        print(conf.to_yaml(cfg))
        print("stage plan:")
        for stage, path, status in plan(cfg):
            print(f"  {stage:15s} {status:8s} {path}")
        return 0
    from flows.pipeline import pipeline

    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        summary = pipeline(preset=args.preset, overrides=args.overrides,
                           summary_json=str(args.summary_json) if args.summary_json else None)
    except BaseException:
        if not interrupted:
            raise
        # Prefect reports the crash to its (ephemeral) server, which Ctrl-C has stopped too: whatever that
        # raises, the run was interrupted and its work is on disk.
        print(f"\n[anyflow] interrupted. Finished stages are cached and the interrupted one kept its work "
              f"({cfg.paths.artifacts}/<stage>/.<key>.partial): run the same command again to resume.",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    _report(summary)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    cfg = conf.load(args.preset, args.overrides)
    configure_environment(cfg)
    from flows.pipeline import evaluate_model

    summary = evaluate_model(model=str(args.student), preset=args.preset, overrides=args.overrides,
                             summary_json=str(args.summary_json) if args.summary_json else None)
    _report(summary)
    return 0


SAMPLER_LABELS = {"student": "student", "consistency": "student, consistency sampling",
                  "teacher_euler": "teacher Euler+CFG"}


def score_table(rows: list[dict], shift: float | None = None) -> str:
    """ToyBench Total by NFE: the student, the same student sampled consistency-style (when the sweep ran it),
    the teacher's Euler + CFG at the same NFE, and the full-step reference (all on N-step grids with time shift
    `shift`, when given)."""
    nfes = sorted({r["nfe"] for r in rows if r["model"] == "student"})
    get = {(r["model"], r["nfe"]): r["total"] for r in rows}
    models = [m for m in SAMPLER_LABELS if any(r["model"] == m for r in rows)]
    ref = next((r for r in rows if r["model"] == "reference"), None)
    cell = lambda m, n: f"{get[(m, n)]:.3f}" if (m, n) in get else "-"
    grid = f"; grids of time shift {shift:g}" if shift is not None else ""
    lines = [f"[anyflow] ToyBench Total (higher is better; not comparable to VBench{grid})",
             "  NFE" + "".join(f"   {SAMPLER_LABELS[m]}" for m in models)]
    lines += [f"  {n:>3}" + "".join(f"   {cell(m, n):>{len(SAMPLER_LABELS[m])}}" for m in models) for n in nfes]
    if ref is not None:
        lines.append(f"  teacher reference ({ref['steps']} steps + CFG, NFE {ref['nfe']}): {ref['total']:.3f} "
                     f"[{ref['total_ci_lo']:.3f}, {ref['total_ci_hi']:.3f}]")
    return "\n".join(lines)


def _report(summary: dict) -> None:
    for stage, info in summary["stages"].items():
        print(f"[anyflow] {stage:15s} {info['status']:9s} {info['path']}")
    print(f"[anyflow] student: {summary['exported_model']}")
    stage2 = summary["stages"].get("stage2", {})
    if stage2.get("probe"):
        scores = ", ".join(f"{n} NFE {v:.3f}" for n, v in stage2["probe"].items())
        print(f"[anyflow] stage-2 probe at its last step: {scores}; training curve {Path(stage2['path']) / 'probes.png'}")
    if summary.get("evaluation"):
        ev = summary["evaluation"]
        rows = Path(ev["table"]).with_name("table.json")
        if rows.is_file():
            print(score_table(json.loads(rows.read_text()), ev.get("grid_shift")))
        verdict = {True: "passed", False: "FAILED", None: "not run"}[ev["anystep_ok"]]
        print(f"[anyflow] any-step check (no significant fall at any NFE doubling): {verdict}; plot {ev['plot']}")
        spans = {"student": ev.get("anystep_span"), **ev.get("baseline_spans", {})}
        for model, span in spans.items():
            if span:
                print(f"[anyflow] {SAMPLER_LABELS.get(model, model)}, {span['from']} -> {span['to']} NFE: Total "
                      f"{span['delta']:+.3f} [{span['ci_lo']:+.3f}, {span['ci_hi']:+.3f}] (paired 95% CI; "
                      f"{'does not fall' if span['ok'] else 'FALLS'})")
    if summary.get("finetune"):
        ft = summary["finetune"]
        print(f"[anyflow] fine-tuned student: {summary['finetuned_model']}")
        print(f"[anyflow] downstream ({ft['bench']}) score at 4 NFE: {ft['downstream_before']:.3f} before -> "
              f"{ft['downstream_after']:.3f} after (real renders {ft['real_downstream_score']:.3f}); base-domain "
              f"4-NFE Total {ft['base_total_before']:.3f} -> {ft['base_total_after']:.3f} "
              f"({'within noise' if ft['base_within_noise'] else 'SIGNIFICANTLY LOWER'}); plot {ft['plot']}")
    print(f"[anyflow] MLflow: {summary['tracking_uri']} (experiment {summary['experiment']}, "
          f"run {summary['parent_run_id']}); browse with: mlflow ui --backend-store-uri {summary['tracking_uri']}")


def serve(args: argparse.Namespace) -> int:
    cfg = conf.load(args.preset, args.overrides)   # fail on a bad config now, not at 03:00
    configure_environment(cfg)
    from flows.deploy import serve_pipeline

    serve_pipeline(args.preset, args.overrides, args.cron, args.name or f"{args.preset}-scheduled")
    return 0


def sample(args: argparse.Namespace) -> int:
    try:
        nfes = [int(n) for n in args.nfe.split(",")]
    except ValueError:
        raise conf.ConfigError(f"--nfe {args.nfe!r}: expected comma-separated integers like 1,4,32") from None
    if any(n < 1 for n in nfes):
        raise conf.ConfigError(f"--nfe {args.nfe!r}: step counts must be >= 1")
    model = args.model or args.student
    if model is None or (args.model and args.student and args.model != args.student):
        raise conf.ConfigError("sample: give the exported student folder once, as --model PATH (or positionally)")
    from tasks.sample import VIDEO_SUFFIXES, sample_student, sample_videos

    if args.out.suffix.lower() in VIDEO_SUFFIXES:
        for path in sample_videos(model, args.prompts, nfes, args.seed, args.out, fps=args.fps):
            print(f"[anyflow] wrote {path}")
        return 0
    sheet = sample_student(model, args.prompts, nfes, args.seed, args.out)
    print(f"[anyflow] samples in {args.out} (contact sheet: {sheet})")
    return 0


def teacher_asset(args: argparse.Namespace) -> int:
    cfg = conf.load(args.preset, [*args.overrides, "teacher.prebuilt=false"])   # train it, never install it
    if cfg.teacher.source != "toy":
        raise conf.ConfigError(f"teacher-asset: teacher.source is {cfg.teacher.source!r}; only the toy teacher is packed")
    configure_environment(cfg)
    from tasks.teacher import build_teacher, teacher_identity
    from tasks.teacher_asset import TOY_TEACHER_ASSET, pack_asset

    out = args.out or TOY_TEACHER_ASSET
    handle = build_teacher(cfg)
    record = pack_asset(Path(handle.path), out, teacher_identity(cfg))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"[anyflow] teacher {handle.key} ({'cache hit' if handle.summary['cache_hit'] else 'built'}: "
          f"{record['summary'].get('num_steps')} steps, {record['summary'].get('seconds')} s) packed into "
          f"{out} ({len(record['files'])} files, {size:.1f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": run, "serve": serve, "evaluate": evaluate, "sample": sample,
                "teacher-asset": teacher_asset}[args.command](args)
    except conf.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
