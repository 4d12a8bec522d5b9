"""Teacher stage: the toy teacher is installed from the shipped prebuilt asset when it matches, else built (and
cached) from its spec; a real teacher is a given Wan folder."""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

from prefect import task

from anyflow.toybuild import build_toy_teacher, toy_world_of
from anyflow.toyworld import WorldSpec
from anyflow.wan import TOY_SPEC_FILE, check_wan_folder
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, folder_fingerprint, read_manifest, stage_dir, stage_key
from tasks.stagerun import StageContext, prefect_cache_key, run_stage
from tasks.teacher_asset import TOY_TEACHER_ASSET, install_asset, read_asset
from tasks.tracking import Tracker


def external_teacher(cfg: PipelineConfig) -> Path:
    """The configured Wan folder, validated; errors name the config field."""
    try:
        return check_wan_folder(cfg.teacher.path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"teacher.path: {err}") from None


def teacher_key(cfg: PipelineConfig) -> str:
    if cfg.teacher.source == "path":
        folder = external_teacher(cfg)
        return stage_key("teacher", {"path": str(folder.resolve()), "files": folder_fingerprint(folder)})
    return stage_key("teacher", teacher_identity(cfg))


def teacher_identity(cfg: PipelineConfig) -> dict:
    """The teacher config that determines the toy teacher: all of it but `prebuilt`, which says where the
    artifact may come from, not what it is (the key's config part, and what a packed asset records)."""
    return cfg.teacher.model_dump(mode="json", exclude={"prebuilt"})


def teacher_location(cfg: PipelineConfig) -> tuple[Path, bool]:
    """(folder, ready): the given Wan folder, or the toy teacher's content-addressed directory and
    whether a complete build is already there."""
    if cfg.teacher.source == "path":
        return Path(cfg.teacher.path), True
    folder = stage_dir(cfg.paths.artifacts, "teacher", teacher_key(cfg))
    return folder, read_manifest(folder) is not None


def _shipped(cfg: PipelineConfig, asset: Path) -> dict | None:
    """The prebuilt asset's record when the toy teacher may be installed from it (it may not match)."""
    return read_asset(asset) if cfg.teacher.source == "toy" and cfg.teacher.prebuilt else None


def prebuilt_available(cfg: PipelineConfig, asset: Path = TOY_TEACHER_ASSET) -> bool:
    """Whether the teacher stage would install the prebuilt asset instead of training."""
    shipped = _shipped(cfg, asset)
    return shipped is not None and shipped.get("key") == teacher_key(cfg)


def build_teacher(cfg: PipelineConfig, progress: bool = True, parent_run_id: str | None = None,
                  asset: Path = TOY_TEACHER_ASSET) -> StageHandle:
    """Install the prebuilt toy teacher (`asset`, when `teacher.prebuilt` and its key matches), build it (a
    WanPipeline folder), or validate the given Wan folder; return its handle."""
    if cfg.teacher.source == "path":
        folder = external_teacher(cfg)
        tracker = Tracker(cfg)
        run_id = tracker.start_run("teacher", parent_id=parent_run_id, tags={
            "stage": "teacher", "source": "path", "artifact_dir": str(folder), "cache_hit": "true"})
        tracker.end_run(run_id)
        return StageHandle("teacher", teacher_key(cfg), str(folder),
                           {"source": "path", "cache_hit": True, "mlflow_run_id": run_id})

    key, shipped = teacher_key(cfg), _shipped(cfg, asset)
    if shipped is not None and shipped.get("key") == key:
        return run_stage(cfg, "teacher", key, teacher_params(cfg), parent_run_id,
                         lambda out, ctx: install_asset(asset, shipped, out))
    if shipped is not None and shipped.get("config") == teacher_identity(cfg):   # same config, other teacher code
        print(f"[anyflow] the prebuilt teacher in {asset} was built by other teacher code (key {shipped['key']}, "
              f"now {key}): training it instead (it took {shipped['summary'].get('seconds')} s when packed). "
              f"Re-pack it with `python -m flows teacher-asset`.", file=sys.stderr)

    def build(out: Path, ctx: StageContext) -> dict:
        losses = deque(maxlen=100)   # the last video steps' losses (image steps, if any, log teacher/image_loss)
        image_due = False

        def log(metrics, step):
            nonlocal image_due
            image = "teacher/image_loss" in metrics
            if not image:
                losses.append(metrics["teacher/loss"])
            if step % 10 == 0 or (image and image_due):   # every 10th step, and the next image step after it
                ctx.log(metrics, step)
                image_due = not image

        build_toy_teacher(cfg.teacher.toy, out, log=log, progress=progress)
        (out / "BUILT_BY").write_text(f"command: {' '.join(sys.argv)}\nspec: {TOY_SPEC_FILE}\n")
        return {"source": "toy", "final_loss": sum(losses) / len(losses), "num_steps": cfg.teacher.toy.train.num_steps}

    return run_stage(cfg, "teacher", key, teacher_params(cfg), parent_run_id, build)


@task(name="teacher", cache_key_fn=prefect_cache_key("teacher", teacher_key), persist_result=True)
def teacher(cfg: PipelineConfig, parent_run_id: str | None) -> StageHandle:
    return build_teacher(cfg, parent_run_id=parent_run_id)


def teacher_params(cfg: PipelineConfig) -> dict:
    return cfg.teacher.model_dump(mode="json")


def require_toy_world(teacher: StageHandle, needs: str, otherwise: str) -> WorldSpec:
    """The toy world `teacher` was built for; a clear error naming what `needs` it when it is another Wan folder."""
    world = toy_world_of(teacher.path)
    if world is None:
        raise ValueError(f"{needs} needs a toy teacher; {teacher.path} is not one ({otherwise})")
    return world
