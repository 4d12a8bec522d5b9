"""Optional teacher tuning (the reference's stage 0, recipe §5): a LoRA flow-matching fine-tune of the teacher on
the synthesized shards, before it serves stage 2 as the real score and as the critic's initialisation.

    σ = shift_s(sigmoid(N(0, 1))),  z_σ = (1 − σ)·x₀ + σ·ε,  L = mean ‖v_φ(z_σ, σ, c) − (ε − x₀)‖²   (§5 steps 1-6)

with 10% of the rows' text replaced by the negative-prompt embedding (so CFG keeps working) and no time
weighting. It adapts the teacher to the data and to the shifted time distribution stage 2 samples from.
Guidance is not fused: the tuned teacher stays an ordinary CFG model. The student is NOT built from the tuned
teacher (stage 1 starts from the base weights, as in the reference); only the real score and the critic are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from anyflow.lora import LoraSpec, attach_lora, load_lora, merge_lora, save_lora
from anyflow.shards import open_shards
from anyflow.teacher import flow_matching_loss, sample_sigma
from anyflow.gradckpt import enable_gradient_checkpointing
from anyflow.training import LogFn, LoopSpec, train
from anyflow.wan import Teacher


@dataclass(frozen=True, kw_only=True)
class TeacherTuneSpec:
    shift: float = 5.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_dropout: float = 0.1

    def __post_init__(self):
        if self.shift <= 0 or self.logit_std <= 0:
            raise ValueError(f"shift and logit_std must be > 0, got {self.shift}, {self.logit_std}")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")


def tune_teacher(teacher: Teacher, data_dir: str | Path, out_dir: str | Path, *, lora: LoraSpec,
                 spec: TeacherTuneSpec, loop: LoopSpec, batch_size: int, log: LogFn = lambda m, s: None,
                 progress: bool = True, gradient_checkpointing: bool = False) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of the teacher's transformer with LoRA on the shards (resumable from
    `out_dir/checkpoints`); write `out_dir/lora.safetensors` (EMA weights). Returns (the tuned copy, summary);
    the teacher itself is left untouched."""
    out_dir = Path(out_dir)
    model = copy.deepcopy(teacher.transformer)
    params = attach_lora(model, lora, seed=loop.seed)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    reader = open_shards(data_dir, teacher.max_sequence_length)
    uncond = teacher.uncond_embedding()

    def step(m, batch, generator):
        x0, text = batch.latents, batch.prompt_embeds
        drop = torch.rand(len(x0), generator=generator) < spec.text_dropout
        text = torch.where(drop.view(-1, 1, 1), uncond.to(text.dtype), text)
        sigma = sample_sigma(len(x0), spec, generator)
        eps = torch.randn(x0.shape, generator=generator)
        return flow_matching_loss(m, x0, text, sigma, eps), {}

    summary = train(model, params, step, lambda pos: reader.batches(batch_size, seed=loop.seed, start=pos), loop,
                    out_dir / "checkpoints", log=log, progress=progress)
    save_lora(model, out_dir / "lora.safetensors", lora)
    return model.eval(), summary


def tuned_transformer(teacher: Teacher, lora_path: str | Path) -> torch.nn.Module:
    """A copy of the teacher's transformer with a `tune_teacher` LoRA merged in (frozen, eval mode)."""
    model = copy.deepcopy(teacher.transformer)
    load_lora(model, lora_path)
    return merge_lora(model).eval().requires_grad_(False)
