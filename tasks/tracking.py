"""MLflow tracking (DESIGN §6): one experiment per pipeline name, one parent run per invocation, one child
run per stage. Runs are addressed by id through `MlflowClient` (never the thread-local "active run"),
because Prefect may run tasks in worker threads.

Default store: sqlite under the run folder (`<paths.root>/mlflow.db`, artifacts in `<paths.root>/mlartifacts`);
`tracking.tracking_uri` or `$MLFLOW_TRACKING_URI` point elsewhere (e.g. a shared `mlflow server`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from conf.schema import PipelineConfig

PARAM_MAX = 6000   # MLflow's param value limit


def tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(cfg.paths.root).resolve() / 'mlflow.db')}"


def experiment_name(cfg: PipelineConfig) -> str:
    return cfg.tracking.experiment or f"anyflow-{cfg.name}"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} → {'a.b': '1'}: nested config as MLflow params."""
    if isinstance(tree, Mapping):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): str(tree)[:PARAM_MAX]}


class Tracker:
    """A thin handle on the tracking store for one pipeline configuration."""

    def __init__(self, cfg: PipelineConfig):
        self.uri = tracking_uri(cfg)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        name = experiment_name(cfg)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):   # keep artifacts next to the database, not in the CWD
                location = (Path(cfg.paths.root).resolve() / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id

    def start_run(self, name: str, tags: Mapping[str, str] | None = None, parent_id: str | None = None) -> str:
        all_tags = {"mlflow.runName": name, **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):   # MLflow's batch limit
            self.client.log_batch(run_id, params=items[i:i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


class MetricLogger:
    """`log(metrics, step)` callback for anyflow loops: buffers points and writes them with `log_batch`
    (sqlite costs ~4 ms per single `log_metric`; a batch of hundreds costs about the same)."""

    def __init__(self, tracker: Tracker, run_id: str, flush_every: int = 200, flush_seconds: float = 10.0):
        self.tracker, self.run_id = tracker, run_id
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.buffer: list[Metric] = []
        self.last_flush = time.time()

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self.buffer) >= self.flush_every or time.time() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 1000):
            self.tracker.client.log_batch(self.run_id, metrics=self.buffer[i:i + 1000])
        self.buffer, self.last_flush = [], time.time()
