"""Export stage: the trained student (teacher weights + its LoRA, merged) as a Diffusers AnyFlowPipeline
folder, plus a contact sheet of samples at a few NFEs. The student comes from the last training stage that
ran (stage 1 until stage 2 lands)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from anyflow.export import export_student, load_student
from anyflow.lora import load_lora, merge_lora
from anyflow.media import contact_sheet
from anyflow.student import student_from_teacher
from anyflow.wan import load_teacher, teacher_video_size
from conf.schema import PipelineConfig
from tasks.artifacts import StageHandle, folder_fingerprint, stage_key
from tasks.stagerun import StageContext, prefect_cache_key, run_stage

PREVIEW_NFES = (1, 4, 32)


def export_params(cfg: PipelineConfig) -> dict:
    return {"gate_value": cfg.stage1.gate_value, "shift": cfg.stage1.shift, "preview_nfes": list(PREVIEW_NFES)}


def export_key(cfg: PipelineConfig, teacher: StageHandle, student: StageHandle) -> str:
    return stage_key("export", export_params(cfg), (teacher.key, student.key))


def run_export(cfg: PipelineConfig, teacher: StageHandle, student: StageHandle,
               parent_run_id: str | None = None) -> StageHandle:
    def build(out: Path, ctx: StageContext) -> dict:
        folder = export_lora_student(cfg, teacher, Path(student.path) / student.summary["lora"], out / "model",
                                     {"student": student.stage, "student_key": student.key, "teacher_key": teacher.key})
        prompts = _preview_prompts(cfg)
        exported = load_student(folder)
        rows = {f"{n} NFE": exported.generate(prompts, nfe=n, seed=cfg.seed) for n in PREVIEW_NFES}
        sheet = contact_sheet(rows, out / "preview.png", columns=prompts)
        ctx.log_artifact(sheet)
        ctx.log_artifact(folder / "anyflow_export.json")
        return {"model": folder.name, "student": student.stage}   # relative: the work dir is renamed

    return run_stage(cfg, "export", export_key(cfg, teacher, student), export_params(cfg), parent_run_id, build)


def export_lora_student(cfg: PipelineConfig, teacher: StageHandle, lora: Path, folder: Path, provenance: dict) -> Path:
    """The teacher as a student with `lora` merged in, written as an AnyFlowPipeline folder."""
    model = load_teacher(teacher.path, negative_prompt=cfg.teacher.negative_prompt)
    trained = student_from_teacher(model.transformer, cfg.stage1.gate_value)
    load_lora(trained, lora)
    return export_student(merge_lora(trained), teacher.path, folder, shift=cfg.stage1.shift,
                          video=teacher_video_size(teacher.path), provenance=provenance)


def _preview_prompts(cfg: PipelineConfig) -> list[str]:
    if cfg.teacher.source == "toy":
        return ["a red circle moving left on a black background", "a blue square moving up on a white background"]
    return ["a cat walking on grass", "a drone shot of a coastline at sunset"]


@task(name="export", cache_key_fn=prefect_cache_key("export", export_key), persist_result=True)
def export(cfg: PipelineConfig, parent_run_id: str | None, teacher: StageHandle, student: StageHandle) -> StageHandle:
    return run_export(cfg, teacher, student, parent_run_id)


def external_student(folder: str | Path) -> StageHandle:
    """A handle on any exported student folder (e.g. from another run), keyed by its files."""
    folder = Path(folder).resolve()
    if not (folder / "anyflow_export.json").is_file():
        raise FileNotFoundError(f"{folder} is not an anyflow student export (no anyflow_export.json)")
    return StageHandle("export", folder_fingerprint(folder), str(folder.parent), {"model": folder.name})
