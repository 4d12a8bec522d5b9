"""The teacher as loaded from any Diffusers Wan2.1 folder (the toy teacher, or Wan2.1-T2V-1.3B/14B-Diffusers).

Conventions every stage shares (recipe §1.3-1.4):
- latents are the VAE posterior mean μ only, normalised per channel: z = (μ − mean_c) / std_c with
  `latents_mean`/`latents_std` from the VAE config; decoding inverts it;
- prompts are encoded the Wan way (tokenise to `max_sequence_length`, encode, cut to the real tokens,
  zero-pad back), through diffusers' own `WanPipeline.encode_prompt` so training matches inference;
- "unconditional" is the embedding of the configured negative prompt (the empty prompt by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import WanPipeline

import anyflow.vae  # noqa: F401  registers LinearPatchVAE so toy folders load (diffusers imports by module path)

REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
TOY_SPEC_FILE = "toy_teacher_spec.json"   # written by anyflow.toybuild next to a toy teacher


@dataclass(frozen=True)
class VideoSize:
    """Pixel size of the videos a teacher generates (num_frames = T·k + 1, Wan convention)."""

    height: int = 480
    width: int = 832
    num_frames: int = 81


def teacher_video_size(folder: str | Path) -> VideoSize:
    """The toy world's size for a toy teacher folder, Wan2.1's 480x832x81 otherwise."""
    spec = Path(folder) / TOY_SPEC_FILE
    if spec.is_file():
        world = json.loads(spec.read_text())["world"]
        return VideoSize(height=world["height"], width=world["width"], num_frames=world["num_frames"])
    return VideoSize()


@dataclass
class Teacher:
    """A loaded Wan pipeline plus the text and latent conventions the trainers need."""

    pipe: WanPipeline
    negative_prompt: str = ""
    max_sequence_length: int = 512

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    def _stats(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, device=device, dtype=dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=device, dtype=dtype).view(shape)
        return mean, std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """VAE mean μ [B, C, F, H, W] → training latent z = (μ − mean_c) / std_c."""
        mean, std = self._stats(mu.device, mu.dtype)
        return (mu - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Training latent z → VAE mean μ = z·std_c + mean_c."""
        mean, std = self._stats(z.device, z.dtype)
        return z * std + mean

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, F, H, W] in [−1, 1] → normalised latents (μ only, recipe §1.3)."""
        moments = self.vae._encode(pixels.to(self.vae.device, self.vae.dtype))
        return self.normalize(moments.chunk(2, dim=1)[0].float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latents [B, C, F, H, W] → frames [B, F, H, W, 3] float32 in [0, 1]."""
        video = self.vae.decode(self.denormalize(z.float()).to(self.vae.dtype), return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video.float(), output_type="np")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings [B, max_sequence_length, D]: real tokens, then zero rows (recipe §1.4)."""
        embeds, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length,
                                            device=self.pipe.text_encoder.device)
        return embeds.float()

    def uncond_embedding(self) -> torch.Tensor:
        """The unconditional embedding [1, S, D]: the negative prompt, encoded like any prompt."""
        return self.encode_prompts([self.negative_prompt])


def check_wan_folder(folder: str | Path) -> Path:
    """Fail early, naming the folder and what is missing, if `folder` is not a Diffusers Wan pipeline."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} is not a Diffusers pipeline folder (no model_index.json)")
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index}: invalid JSON ({e})") from e
    missing = [c for c in REQUIRED_COMPONENTS if not entries.get(c) or entries[c][0] is None]
    if missing:
        raise ValueError(f"{index}: a Wan teacher needs components {list(REQUIRED_COMPONENTS)}; missing {missing}")
    absent = [c for c in REQUIRED_COMPONENTS if not (folder / c).is_dir()]
    if absent:
        raise FileNotFoundError(f"{folder}: component folders missing: {absent}")
    return folder


def load_teacher(folder: str | Path, negative_prompt: str = "", max_sequence_length: int = 512,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Teacher:
    """Load a Wan teacher folder; everything frozen and in eval mode."""
    pipe = WanPipeline.from_pretrained(str(check_wan_folder(folder)), dtype=dtype).to(device)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return Teacher(pipe=pipe, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
