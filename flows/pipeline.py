"""The AnyFlow pipeline as Prefect flows (DESIGN §1): stages in order, each a cached task.

`pipeline`: teacher → synthesis → [teacher_tune] → stage 1 → stage 2 → export → evaluate
→ [downstream_data → finetune → finetune_eval]; bracketed stages run when their config enables them. `evaluate_model`: score any exported student folder against the teacher's baselines.
Parameters are JSON-friendly so deployments and the API can start runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

import conf
from tasks.artifacts import StageHandle, write_json_atomic
from tasks.evaluate import evaluate, evaluate_key, evaluate_params, grid_shift
from tasks.export import export, export_key, export_params, external_student
from tasks.finetune import (downstream_data, downstream_data_key, downstream_data_params, external_shards, finetune,
                            finetune_eval, finetune_eval_key, finetune_eval_params, finetune_key, finetune_params)
from tasks.pipelinerun import close_pipeline_run, open_pipeline_run, run_summary
from tasks.stage1 import stage1, stage1_key, stage1_params
from tasks.stage2 import stage2, stage2_key, stage2_params
from tasks.stagerun import artifact_complete, for_run, record_cached
from tasks.synthesis import synthesis, synthesis_key, synthesis_params
from tasks.teacher import teacher, teacher_key, teacher_params
from tasks.teacher_tune import teacher_tune, teacher_tune_key, teacher_tune_params


def _stage(stage_task, cfg, key: str, params: dict, parent: str, summary: dict, **upstream) -> StageHandle:
    """Run one stage task (or take it from Prefect's cache) and record it in the run summary."""
    state = for_run(stage_task, cfg, artifact_complete(cfg, stage_task.name, key))(
        cfg, parent, **upstream, return_state=True)
    handle: StageHandle = state.result()          # raises the stage's exception if it failed
    prefect_cached = state.name == "Cached"
    if prefect_cached:
        record_cached(cfg, handle, params, parent)
    cache_hit = prefect_cached or bool(handle.summary.get("cache_hit"))
    status = "cache hit" if cache_hit else "prebuilt" if handle.summary.get("source") == "prebuilt" else "built"
    summary["stages"][handle.stage] = {"path": handle.path, "key": handle.key, "cache_hit": cache_hit,
                                       "prefect_state": state.name,
                                       **{k: v for k, v in handle.summary.items() if k != "cache_hit"},
                                       "status": status}
    get_run_logger().info(f"{handle.stage}: {status} → {handle.path}")
    return handle


def _evaluate(cfg, parent: str, summary: dict, t: StageHandle, student: StageHandle) -> None:
    ev = _stage(evaluate, cfg, evaluate_key(cfg, t, student), evaluate_params(cfg), parent, summary,
                teacher=t, student=student)
    summary["evaluation"] = {"table": str(Path(ev.path) / ev.summary["table"]),
                             "plot": str(Path(ev.path) / ev.summary["plot"]),
                             "student_total": ev.summary["student_total"], "anystep_ok": ev.summary["anystep_ok"],
                             "anystep_span": ev.summary.get("anystep_span"),
                             "baseline_spans": ev.summary.get("baseline_spans", {}),
                             "grid_shift": grid_shift(cfg)}


def _tracked(preset: str, overrides: list[str] | None, summary_json: str | None,
             body: Callable[[conf.PipelineConfig, str, dict], None]) -> dict[str, Any]:
    """Resolve the config, open the parent MLflow run, run `body(cfg, parent_run_id, summary)`, close the
    run (FAILED on any error) and write the summary either way."""
    overrides = list(overrides or [])
    cfg = conf.load(preset, overrides)
    flow_run_id = flow_run.get_id()
    parent = open_pipeline_run(cfg, preset, overrides, flow_run_id)
    summary = run_summary(cfg, preset, parent, flow_run_id)
    try:
        body(cfg, parent, summary)
    except BaseException as err:
        summary["error"] = f"{type(err).__name__}: {err}"
        close_pipeline_run(cfg, parent, summary, failed=True)
        _write(summary, summary_json)
        raise
    close_pipeline_run(cfg, parent, summary)
    _write(summary, summary_json)
    return summary


def _write(summary: dict, path: str | None) -> None:
    if path:
        write_json_atomic(path, summary)


@flow(name="anyflow-pipeline", log_prints=True)
def pipeline(preset: str = "toy", overrides: list[str] | None = None, summary_json: str | None = None) -> dict[str, Any]:
    """Run the pipeline for `preset` with dotted `overrides`; return (and optionally write) the run summary."""
    def body(cfg, parent, summary):
        t = _stage(teacher, cfg, teacher_key(cfg), teacher_params(cfg), parent, summary)
        data = _stage(synthesis, cfg, synthesis_key(cfg, t), synthesis_params(cfg), parent, summary, teacher=t)
        tuned = None
        if cfg.teacher_tune.enabled:
            tuned = _stage(teacher_tune, cfg, teacher_tune_key(cfg, t, data), teacher_tune_params(cfg), parent,
                           summary, teacher=t, data=data)
        s1 = _stage(stage1, cfg, stage1_key(cfg, t, data), stage1_params(cfg), parent, summary, teacher=t, data=data)
        s2 = _stage(stage2, cfg, stage2_key(cfg, t, data, s1, tuned), stage2_params(cfg), parent, summary, teacher=t,
                    data=data, student=s1, tuned=tuned)
        student = _stage(export, cfg, export_key(cfg, t, s2), export_params(cfg), parent, summary, teacher=t,
                         student=s2)
        summary["exported_model"] = str(Path(student.path) / student.summary["model"])
        _evaluate(cfg, parent, summary, t, student)
        if cfg.finetune.enabled:
            _finetune(cfg, parent, summary, t, data, s2, student)

    return _tracked(preset, overrides, summary_json, body)


def _finetune(cfg, parent: str, summary: dict, t: StageHandle, base: StageHandle, distilled: StageHandle,
              exported: StageHandle) -> None:
    if cfg.finetune.renders_toy_domain:
        data = _stage(downstream_data, cfg, downstream_data_key(cfg, t), downstream_data_params(cfg), parent, summary,
                      teacher=t)
    else:
        data = external_shards(cfg.finetune.domain)
    ft = _stage(finetune, cfg, finetune_key(cfg, t, distilled, data, base, exported), finetune_params(cfg), parent,
                summary, teacher=t, student=distilled, data=data, base=base, exported=exported)
    fe = _stage(finetune_eval, cfg, finetune_eval_key(cfg, t, exported, ft), finetune_eval_params(cfg), parent,
                summary, teacher=t, before=exported, after=ft)
    summary["finetuned_model"] = str(Path(ft.path) / ft.summary["model"])
    summary["finetune"] = {k: fe.summary[k] for k in ("bench", "downstream_before", "downstream_after",
                                                      "base_total_before", "base_total_after", "base_within_noise",
                                                      "real_downstream_score")}
    summary["finetune"]["plot"] = str(Path(fe.path) / fe.summary["plot"])


@flow(name="anyflow-evaluate", log_prints=True)
def evaluate_model(model: str, preset: str = "toy", overrides: list[str] | None = None,
                   summary_json: str | None = None) -> dict[str, Any]:
    """Score an exported student folder (no training); the teacher of `preset` provides the baselines."""
    def body(cfg, parent, summary):
        student = external_student(model)
        t = _stage(teacher, cfg, teacher_key(cfg), teacher_params(cfg), parent, summary)
        summary["exported_model"] = str(Path(model).resolve())
        _evaluate(cfg, parent, summary, t, student)

    return _tracked(preset, overrides, summary_json, body)
