"""The toy teacher: flow-matching pieces, and the ci-preset build as a real WanPipeline folder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

import anyflow  # noqa: F401  (registers LinearPatchVAE for from_pretrained)
from anyflow.teacher import TeacherTrainHparams, sample_sigma


def test_sigma_samples_are_logit_normal_then_shifted():
    hp = TeacherTrainHparams(shift=1.0)
    sig = sample_sigma(20000, hp, torch.Generator().manual_seed(0))
    assert 0 < sig.min() and sig.max() < 1
    logit = torch.logit(sig)
    assert abs(logit.mean()) < 0.05 and abs(logit.std() - 1) < 0.05


def test_hparams_validate():
    with pytest.raises(ValueError, match="text_dropout"):
        TeacherTrainHparams(text_dropout=1.5)


def test_ci_teacher_is_a_wan_pipeline_folder(ci_teacher):
    folder = Path(ci_teacher.path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert ci_teacher.summary["num_steps"] == 30 and np.isfinite(ci_teacher.summary["final_loss"])


def test_ci_teacher_samples_with_the_standard_call(ci_teacher):
    pipe = WanPipeline.from_pretrained(ci_teacher.path)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving left on a black background", height=32, width=32, num_frames=9,
                  num_inference_steps=2, guidance_scale=3.0, output_type="np").frames
    assert frames.shape == (1, 9, 32, 32, 3) and frames.min() >= 0 and frames.max() <= 1
    latents = pipe(["a blue square moving up on a white background"] * 2, height=32, width=32, num_frames=9,
                   num_inference_steps=2, guidance_scale=1.0, output_type="latent").frames
    assert latents.shape == (2, 16, 5, 8, 8)


def test_teacher_build_is_cached(ci_config, ci_teacher):
    from tasks.teacher import build_teacher

    cfg = ci_config.model_copy(update={"paths": ci_config.paths.model_copy(
        update={"root": str(Path(ci_teacher.path).parents[2])})})
    again = build_teacher(cfg, progress=False)
    assert again.path == ci_teacher.path and again.summary["cache_hit"]
