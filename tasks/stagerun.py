"""What every stage task does around its `anyflow` call: an MLflow child run of the pipeline's parent run,
the content-addressed build (DESIGN §5), and the Prefect cache binding.

Prefect caches a stage under `<stage>-<key>` (key = stage config + upstream keys + code version), so a
re-run with the same inputs is a Prefect cache hit. A cache entry is only trusted while its artifact
directory is complete: `for_run` forces a refresh when the directory was deleted or never finished.
A stage skipped by Prefect's cache still gets a child run, tagged `cache_hit=true` with the id of the run
that built it, so the MLflow view of every invocation is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from prefect import Task, task

from anyflow.training import LoopSpec
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, build_stage, code_version, read_manifest, stage_dir
from tasks.tracking import MetricLogger, Tracker, flatten


@dataclass
class StageContext:
    """Handed to a stage's build function: where to log, and the stage's MLflow run."""

    tracker: Tracker
    run_id: str
    log: MetricLogger

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.tracker.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.tracker.client.log_artifact(self.run_id, str(path), artifact_path)


def run_stage(cfg: PipelineConfig, stage: str, key: str, params: Mapping[str, Any], parent_run_id: str | None,
              build: Callable[[Path, StageContext], dict[str, Any]], resumable: bool = False) -> StageHandle:
    """Open the stage's child run, build (or re-use) its artifact, tag the run, return the handle."""
    tracker = Tracker(cfg)
    run_id = tracker.start_run(stage, parent_id=parent_run_id,
                               tags={"stage": stage, "stage_key": key, "code_version": code_version(stage)})
    tracker.log_params(run_id, flatten(params))
    ctx = StageContext(tracker, run_id, MetricLogger(tracker, run_id))
    try:
        handle = build_stage(cfg.paths.artifacts, stage, key,
                             lambda out: {**build(out, ctx), "mlflow_run_id": run_id}, resumable=resumable)
        ctx.log.flush()
        numbers = {f"{stage}/final/{k}": v for k, v in handle.summary.items()   # not the per-step curves
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        ctx.log(numbers, 0)
        ctx.log.flush()
        tracker.set_tags(run_id, {"cache_hit": str(handle.summary["cache_hit"]).lower(), "artifact_dir": handle.path,
                                  "source_run_id": handle.summary.get("mlflow_run_id", run_id)})
        tracker.end_run(run_id)
    except BaseException as err:
        ctx.log.flush()
        tracker.set_tags(run_id, {"error": f"{type(err).__name__}: {err}"[:5000]})
        tracker.end_run(run_id, "FAILED")
        raise
    return handle


@task(name="record-cached-stage")
def record_cached(cfg: PipelineConfig, handle: StageHandle, params: Mapping[str, Any], parent_run_id: str | None):
    """A child run for a stage Prefect served from its cache (its body, and so its own run, did not execute)."""
    tracker = Tracker(cfg)
    run_id = tracker.start_run(handle.stage, parent_id=parent_run_id, tags={
        "stage": handle.stage, "stage_key": handle.key, "code_version": code_version(handle.stage), "cache_hit": "true",
        "artifact_dir": handle.path, "source_run_id": handle.summary.get("mlflow_run_id", "")})
    tracker.log_params(run_id, flatten(params))
    tracker.end_run(run_id)
    return run_id


def prefect_cache_key(stage: str, key_fn: Callable[..., str]) -> Callable:
    """A Prefect `cache_key_fn` for a stage task whose parameters are (cfg, parent_run_id, **upstream handles)."""
    def cache_key(_context, parameters: dict) -> str:
        upstream = {k: v for k, v in parameters.items() if k not in ("cfg", "parent_run_id")}
        return f"{stage}-{key_fn(parameters['cfg'], **upstream)}"
    return cache_key


def artifact_complete(cfg: PipelineConfig, stage: str, key: str) -> bool:
    return read_manifest(stage_dir(cfg.paths.artifacts, stage, key)) is not None


def for_run(stage_task: Task, cfg: PipelineConfig, complete: bool) -> Task:
    """The stage task bound to this run folder's Prefect result store; its cache is refreshed (the stage
    re-runs) when the artifact it would return is not complete on disk."""
    return stage_task.with_options(result_storage=Path(cfg.paths.root).resolve() / "prefect-results",
                                   refresh_cache=not complete)


def loop_spec(section: Any, name: str) -> LoopSpec:
    """The shared loop's settings from a training section of the config (stage 1, stage 2, teacher tuning,
    fine-tuning): every LoopSpec field the section has; the LoopSpec default for the rest."""
    values = {f.name: getattr(section, f.name) for f in fields(LoopSpec) if f.name != "name" and hasattr(section, f.name)}
    return LoopSpec(**{**values, "betas": tuple(section.betas)}, name=name)
