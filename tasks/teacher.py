"""Teacher stage: the toy teacher is built (and cached) from its spec; a real teacher is a given folder."""

from __future__ import annotations

import sys
from pathlib import Path

from anyflow.toybuild import build_toy_teacher
from anyflow.wan import TOY_SPEC_FILE, check_wan_folder
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, build_stage, read_manifest, stage_dir, stage_key


def teacher_key(cfg: PipelineConfig) -> str:
    return stage_key("teacher", cfg.teacher.model_dump(mode="json"))


def teacher_location(cfg: PipelineConfig) -> tuple[Path, bool]:
    """(folder, ready): the given Wan folder, or the toy teacher's content-addressed directory and
    whether a complete build is already there."""
    if cfg.teacher.source == "path":
        return Path(cfg.teacher.path), True
    folder = stage_dir(cfg.paths.artifacts, "teacher", teacher_key(cfg))
    return folder, read_manifest(folder) is not None


def build_teacher(cfg: PipelineConfig, progress: bool = True) -> StageHandle:
    """Build the toy teacher (a WanPipeline folder) or validate the given Wan folder; return its handle."""
    if cfg.teacher.source == "path":
        try:
            folder = check_wan_folder(cfg.teacher.path)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"teacher.path: {err}") from None
        return StageHandle("teacher", "external", str(folder), {"source": "path", "cache_hit": True})

    def build(out: Path) -> dict:
        losses: list[float] = []
        build_toy_teacher(cfg.teacher.toy, out, log=lambda m, s: losses.append(m["teacher/loss"]), progress=progress)
        (out / "BUILT_BY").write_text(
            f"command: {' '.join(sys.argv)}\nspec: {TOY_SPEC_FILE}\n")
        tail = losses[-100:]
        return {"source": "toy", "final_loss": sum(tail) / len(tail), "num_steps": len(losses)}

    return build_stage(cfg.paths.artifacts, "teacher", teacher_key(cfg), build)
