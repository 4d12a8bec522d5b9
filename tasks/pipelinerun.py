"""The pipeline's parent MLflow run: resolved config as an artifact, tags to find and compare runs, and the
run summary that other systems chain on."""

from __future__ import annotations

import json
from typing import Any

import conf
from conf.schema import PipelineConfig
from tasks.artifacts import code_version
from tasks.tracking import Tracker, experiment_name, flatten


def open_pipeline_run(cfg: PipelineConfig, preset: str, overrides: list[str], flow_run_id: str | None) -> str:
    tracker = Tracker(cfg)
    run_id = tracker.start_run(cfg.name, tags={
        "pipeline": cfg.name, "preset": preset, "config_hash": conf.config_hash(cfg)[:16],
        "code_version": code_version(), "prefect_flow_run_id": flow_run_id or "", "overrides": " ".join(overrides)})
    tracker.log_params(run_id, flatten(cfg.model_dump(mode="json")))
    tracker.client.log_text(run_id, conf.to_yaml(cfg), "config.yaml")
    return run_id


def close_pipeline_run(cfg: PipelineConfig, run_id: str, summary: dict[str, Any], failed: bool = False) -> None:
    tracker = Tracker(cfg)
    tracker.client.log_text(run_id, json.dumps(summary, indent=2, default=str), "summary.json")
    hits = [s["cache_hit"] for s in summary.get("stages", {}).values()]
    tracker.set_tags(run_id, {"stages_cached": f"{sum(hits)}/{len(hits)}"})
    tracker.end_run(run_id, "FAILED" if failed else "FINISHED")


def run_summary(cfg: PipelineConfig, preset: str, run_id: str, flow_run_id: str | None) -> dict[str, Any]:
    """The skeleton of the machine-readable summary (`--summary-json`)."""
    tracker = Tracker(cfg)
    return {"preset": preset, "pipeline": cfg.name, "config_hash": conf.config_hash(cfg)[:16],
            "code_version": code_version(), "tracking_uri": tracker.uri, "experiment": experiment_name(cfg),
            "parent_run_id": run_id, "prefect_flow_run_id": flow_run_id, "stages": {}, "exported_model": None,
            "evaluation": None}
