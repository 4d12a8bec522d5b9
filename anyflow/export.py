"""Export the student as a Diffusers `AnyFlowPipeline` folder, and sample it: `Student.generate`.

The folder holds the merged student transformer (`AnyFlowTransformer3DModel`), the teacher's VAE, text
encoder and tokenizer, and a `FlowMapEulerDiscreteScheduler` with the training shift, so

    import anyflow                      # only needed for the toy world's LinearPatchVAE
    pipe = AnyFlowPipeline.from_pretrained(folder)
    frames = pipe(prompt, num_inference_steps=4, height=..., width=..., num_frames=...).frames

runs at any step count (recipe §8.1: NFE = steps, guidance fused, guidance_scale 1). `anyflow_export.json`
records the video size and text length the student was trained for, and where it came from.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, FlowMapEulerDiscreteScheduler

from anyflow.wan import VideoSize, load_teacher

EXPORT_META = "anyflow_export.json"


def export_student(student: AnyFlowTransformer3DModel, teacher_folder: str | Path, out_dir: str | Path,
                   shift: float, video: VideoSize, max_sequence_length: int = 512,
                   provenance: dict | None = None) -> Path:
    """Write an AnyFlowPipeline folder at `out_dir` (a temporary sibling renamed into place: all or nothing)."""
    if any(".lora_" in n for n, _ in student.named_parameters()):
        raise ValueError("export_student: merge the LoRA adapters first (anyflow.lora.merge_lora)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"export target {out_dir} exists and is not empty")
    teacher = load_teacher(teacher_folder)
    pipe = AnyFlowPipeline(tokenizer=teacher.pipe.tokenizer, text_encoder=teacher.pipe.text_encoder,
                           vae=teacher.pipe.vae, transformer=student,
                           scheduler=FlowMapEulerDiscreteScheduler(shift=shift))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp)
        meta = {"format": "anyflow-student/1", "shift": shift, "video": asdict(video),
                "max_sequence_length": max_sequence_length, "teacher": str(teacher_folder),
                **({"provenance": provenance} if provenance else {})}
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@dataclass
class Student:
    """An exported student, ready to sample at any NFE."""

    pipe: AnyFlowPipeline
    video: VideoSize
    max_sequence_length: int = 512

    @torch.no_grad()
    def generate(self, prompts: list[str], nfe: int, seed: int, batch_size: int = 16,
                 output_type: str = "np") -> np.ndarray | torch.Tensor:
        """Videos for `prompts` at `nfe` steps (guidance fused: 1 call per step). Sample i's noise comes from
        its own generator seeded `seed + i`, so results do not depend on `batch_size` (common random numbers).
        Returns frames [B, F, H, W, 3] in [0, 1] (or normalised latents [B, C, F, H, W] for output_type="latent")."""
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        out = []
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i:i + batch_size])
            gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
            res = self.pipe(chunk, height=self.video.height, width=self.video.width, num_frames=self.video.num_frames,
                            num_inference_steps=nfe, guidance_scale=1.0, generator=gens, output_type=output_type,
                            max_sequence_length=self.max_sequence_length).frames
            out.append(torch.as_tensor(res) if output_type == "latent" else np.asarray(res))
        return torch.cat(out) if output_type == "latent" else np.concatenate(out)


def load_student(folder: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Student:
    """Load an exported folder (needs its `anyflow_export.json`)."""
    folder = Path(folder)
    meta_path = folder / EXPORT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not an anyflow student export (no {EXPORT_META})")
    meta = json.loads(meta_path.read_text())
    pipe = AnyFlowPipeline.from_pretrained(str(folder), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return Student(pipe=pipe, video=VideoSize(**meta["video"]), max_sequence_length=meta["max_sequence_length"])
