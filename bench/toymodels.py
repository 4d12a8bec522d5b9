"""Random-init models and inputs of a preset's toy-teacher size, shared by the cost benchmarks (cost does
not depend on the weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import conf
from anyflow.lora import attach_lora
from anyflow.student import student_from_teacher
from anyflow.teacher import build_transformer


@dataclass
class ToyModels:
    cfg: conf.PipelineConfig
    teacher: torch.nn.Module          # frozen
    student: torch.nn.Module          # teacher weights + the stage-1 LoRA
    params: list                      # the student's LoRA parameters
    latent_shape: tuple[int, ...]     # [B, C, F, H, W]
    text: torch.Tensor                # [B, 512, D]: 12 real rows, Wan zero padding
    uncond: torch.Tensor              # [1, 512, D]


def toy_models(preset: str, batch: int, seed: int = 0) -> ToyModels:
    torch.set_num_threads(2)
    cfg = conf.load(preset)
    toy = cfg.teacher.toy
    teacher = build_transformer(toy.arch, toy.vae_z_dim, toy.text.d_model, seed=seed).eval().requires_grad_(False)
    student = student_from_teacher(teacher, cfg.stage1.gate_value)
    params = attach_lora(student, cfg.stage1.lora, seed=seed)
    w = toy.world
    shape = (batch, toy.vae_z_dim, (w.num_frames - 1) // 2 + 1, w.height // 4, w.width // 4)  # LinearPatchVAE 2x4x4
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, 512, toy.text.d_model)
    text[:, :12] = torch.randn(batch, 12, toy.text.d_model, generator=g)
    uncond = torch.zeros(1, 512, toy.text.d_model)
    uncond[:, 0] = 1.0
    return ToyModels(cfg, teacher, student, params, shape, text, uncond)
