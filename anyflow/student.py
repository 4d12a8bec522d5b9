"""The AnyFlow student built from a Wan teacher, and the model-call conventions of both.

Student from teacher (recipe §3.2, DESIGN §3): the teacher's state dict loads into diffusers'
`AnyFlowTransformer3DModel` with only `condition_embedder.delta_embedder.*` missing; the delta embedder is
initialised as a copy of `time_embedder`. Interpolated timestep conditioning

    e(t, r) = (1 − g)·time_embedder(sin t) + g·delta_embedder(sin r),    g = gate_value (0.25)

then equals the teacher's embedding at r = t, so the fresh student *is* the teacher on the diagonal.

Layouts (recipe §1.2): our training code keeps latents channel-major `[B, C, F, H, W]` (the VAE's and the
teacher's layout) and times in σ units `[B]`; the student takes frame-major `[B, F, C, H, W]` with per-frame
timesteps `[B, F]` in t = 1000·σ units. `average_velocity` does the conversion at the
model boundary (`anyflow.teacher.teacher_velocity` for the teacher), and collapse Wan's zero padding of
the text exactly (anyflow.textpad).
"""

from __future__ import annotations

import inspect

import torch
from diffusers import AnyFlowTransformer3DModel, WanTransformer3DModel

from anyflow.schedule import NUM_TRAIN_TIMESTEPS
from anyflow.textpad import collapse_padding, collapsed_text

# WanTransformer3DModel config keys the bidirectional AnyFlow model does not take, with the only value it supports.
_WAN_ONLY = {"qk_norm": "rms_norm_across_heads", "added_kv_proj_dim": None, "pos_embed_seq_len": None}


def to_frame_major(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] → [B, F, C, H, W]."""
    return x.permute(0, 2, 1, 3, 4)


def to_channel_major(x: torch.Tensor) -> torch.Tensor:
    """[B, F, C, H, W] → [B, C, F, H, W]."""
    return x.permute(0, 2, 1, 3, 4)


def per_frame(sigma: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-sample σ [B] → per-frame timesteps [B, F] in t = 1000·σ units (recipe §1.2, P15)."""
    return (sigma * NUM_TRAIN_TIMESTEPS)[:, None].expand(-1, num_frames)


def student_config(teacher: WanTransformer3DModel, gate_value: float) -> dict:
    """The AnyFlowTransformer3DModel config that mirrors `teacher`; refuses features the student lacks."""
    cfg = dict(teacher.config)
    for key, supported in _WAN_ONLY.items():
        if cfg.get(key, supported) != supported:
            raise ValueError(f"teacher transformer config {key}={cfg[key]!r} is not supported by "
                             f"AnyFlowTransformer3DModel (needs {supported!r})")
    accepted = inspect.signature(AnyFlowTransformer3DModel.__init__).parameters
    keep = {k: v for k, v in cfg.items() if k in accepted and k != "self"}
    keep.update(gate_value=gate_value, deltatime_type="r", patch_size=tuple(cfg["patch_size"]))
    return keep


def student_from_teacher(teacher: WanTransformer3DModel, gate_value: float = 0.25) -> AnyFlowTransformer3DModel:
    """A fresh AnyFlow student carrying the teacher's weights, delta_embedder := time_embedder (recipe §3.2)."""
    if not 0.0 <= gate_value <= 1.0:
        raise ValueError(f"gate_value must be in [0, 1], got {gate_value}")
    student = AnyFlowTransformer3DModel(**student_config(teacher, gate_value))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    expected_missing = {k for k in student.state_dict() if k.startswith("condition_embedder.delta_embedder.")}
    if set(missing) != expected_missing or unexpected:
        raise ValueError(f"teacher → student weight mismatch: missing {sorted(set(missing) - expected_missing)}, "
                         f"unexpected {sorted(unexpected)}")
    emb = student.condition_embedder
    emb.delta_embedder.load_state_dict(emb.time_embedder.state_dict())
    if student.dtype != teacher.dtype:
        student = student.to(dtype=teacher.dtype)
    return student.to(device=teacher.device)


def average_velocity(
    student: AnyFlowTransformer3DModel, z_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """u_θ(z_t, t, r, c): the student's average velocity; z_t [B, C, F, H, W], t, r [B] in σ, text [B, S, D]."""
    num_frames = z_t.shape[2]
    text, bias = collapse_padding(text)
    with collapsed_text(student, bias):
        u = student(to_frame_major(z_t), timestep=per_frame(t, num_frames), r_timestep=per_frame(r, num_frames),
                    encoder_hidden_states=text, return_dict=False)[0]
    return to_channel_major(u)

