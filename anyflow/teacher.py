"""The toy teacher: a tiny WanTransformer3DModel trained by flow matching on toy-world VAE latents.

Flow matching (rectified flow, recipe §1.1/§5): z_σ = (1 − σ)·x₀ + σ·ε, target v = ε − x₀, loss
‖v_θ(z_σ, σ, c) − v‖². Times σ = shift_s(sigmoid(n)), n ~ N(m, s²) (logit-normal, then the time shift
σ' = sσ/(1 + (s − 1)σ)); 10% of prompts are replaced by the empty-prompt embedding so CFG works.
AdamW (or Muon on the blocks' matrices, `anyflow.muon`) with warmup + cosine decay, gradient clipping, EMA
(diffusers EMAModel), accelerate on CPU. Optionally joint image-video training as Wan2.1 does it: every
`image_every`-th step trains on still images (the first latent frame of training videos) instead of videos.
The result is saved as a Diffusers `WanPipeline` folder (see `anyflow.toybuild`).

Shapes: latents x₀ [B, C, L, h, w] (teacher layout), prompt embeddings [B, S, D].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from accelerate import Accelerator
from diffusers import WanTransformer3DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from anyflow.muon import MuonAdamW, hidden_matrices
from anyflow.schedule import NUM_TRAIN_TIMESTEPS, shift_sigma
from anyflow.textpad import collapse_padding, collapsed_text

LogFn = Callable[[Mapping[str, float], int], None]


@dataclass(frozen=True, kw_only=True)
class TeacherArch:
    """WanTransformer3DModel size. Wan2.1 patchifies its latent 1x2x2; the toy may use finer tokens."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 512
    freq_dim: int = 128


@dataclass(frozen=True, kw_only=True)
class TeacherTrainHparams:
    """Flow-matching hyperparameters of the toy teacher."""

    num_steps: int = 4000           # optimizer steps
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0          # max global grad norm
    ema_decay: float = 0.999
    ema_start_step: int = 500       # the EMA copies the weights until this step
    text_dropout: float = 0.1       # fraction of prompts replaced by the empty prompt (enables CFG)
    logit_mean: float = 0.0         # logit-normal time sampling
    logit_std: float = 1.0
    shift: float = 3.0              # time shift s applied to every sampled σ
    seed: int = 0
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon on the blocks' 2-D weights, AdamW (lr) on the rest
    muon_lr: float = 0.02           # Muon's lr (same warmup + cosine schedule as lr)
    image_every: int = 0            # > 0: every image_every-th step trains on images (joint image-video); 0: videos only

    def __post_init__(self):
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.num_steps < 1 or self.batch_size < 1:
            raise ValueError(f"num_steps and batch_size must be >= 1, got {self.num_steps}, {self.batch_size}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.muon_lr <= 0:
            raise ValueError(f"muon_lr must be > 0, got {self.muon_lr}")
        if self.image_every < 0:
            raise ValueError(f"image_every must be >= 0 (0: videos only), got {self.image_every}")


def build_transformer(arch: TeacherArch, in_channels: int, text_dim: int, seed: int) -> WanTransformer3DModel:
    """A seeded, randomly initialised Wan2.1-style transformer of the given size."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return WanTransformer3DModel(
            patch_size=tuple(arch.patch_size), num_attention_heads=arch.num_attention_heads,
            attention_head_dim=arch.attention_head_dim, in_channels=in_channels, out_channels=in_channels,
            text_dim=text_dim, freq_dim=arch.freq_dim, ffn_dim=arch.ffn_dim, num_layers=arch.num_layers,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
        )


def sample_sigma(n: int, hp: TeacherTrainHparams, generator: torch.Generator) -> torch.Tensor:
    """σ = shift_s(sigmoid(N(m, s²))), (n,) in (0, 1): logit-normal times, then the time shift."""
    u = torch.sigmoid(hp.logit_mean + hp.logit_std * torch.randn(n, generator=generator))
    return shift_sigma(u, hp.shift)


def teacher_velocity(
    model: WanTransformer3DModel, z_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """v_φ(z_σ, σ, c): a Wan transformer's velocity; z_t [B, C, F, H, W], σ [B], text [B, S, D] zero-padded.
    The padding is collapsed exactly (anyflow.textpad), so 512-row Wan embeddings cost what their real tokens cost."""
    text, bias = collapse_padding(text)
    with collapsed_text(model, bias):
        return model(z_t, timestep=sigma * NUM_TRAIN_TIMESTEPS, encoder_hidden_states=text, return_dict=False)[0]


def flow_matching_loss(
    model: WanTransformer3DModel, x0: torch.Tensor, text: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Rectified-flow loss: mean ‖v_θ((1−σ)x₀ + σε, σ, c) − (ε − x₀)‖² (recipe §5, step 4-6)."""
    s = sigma.view(-1, 1, 1, 1, 1)
    v = teacher_velocity(model, (1 - s) * x0 + s * eps, sigma, text)
    return ((v.float() - (eps - x0).float()) ** 2).mean()


def teacher_optimizer(model: WanTransformer3DModel, hp: TeacherTrainHparams) -> torch.optim.Optimizer:
    """AdamW on every weight, or Muon (muon_lr) on the blocks' 2-D weights with AdamW (lr) on the rest."""
    if hp.optimizer == "muon":
        return MuonAdamW(model.parameters(), hidden_matrices(model), lr=hp.lr, muon_lr=hp.muon_lr,
                         weight_decay=hp.weight_decay, betas=(0.9, 0.99))
    return torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.99))


def training_batch(
    latents: torch.Tensor, prompt_index: torch.Tensor, prompt_embeds: torch.Tensor, uncond_embed: torch.Tensor,
    hp: TeacherTrainHparams, gen: torch.Generator, images: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x₀, text, σ, ε) of one step: `batch_size` videos, or for an image step `batch_size`·L images (the first
    latent frame of random training videos: the causal VAE encodes pixel frame 0 alone), so both cost the same
    tokens. Text dropout applies to both."""
    n = hp.batch_size * (latents.shape[2] if images else 1)
    idx = torch.randint(0, len(latents), (n,), generator=gen)
    x0 = latents[idx][:, :, :1] if images else latents[idx]
    text = prompt_embeds[prompt_index[idx]]
    drop = torch.rand(n, generator=gen) < hp.text_dropout
    text = torch.where(drop.view(-1, 1, 1), uncond_embed, text)
    sigma = sample_sigma(n, hp, gen)
    eps = torch.randn(x0.shape, generator=gen)
    return x0, text, sigma, eps


def train_teacher(
    model: WanTransformer3DModel,
    latents: torch.Tensor,
    prompt_index: torch.Tensor,
    prompt_embeds: torch.Tensor,
    uncond_embed: torch.Tensor,
    hp: TeacherTrainHparams,
    log: LogFn = lambda metrics, step: None,
    progress: bool = True,
) -> WanTransformer3DModel:
    """Train `model` by flow matching on `latents` [N, C, L, h, w] whose prompts are rows of
    `prompt_embeds` [P, S, D] picked by `prompt_index` [N]. Returns the model with EMA weights.
    Image steps draw from their own generator, so the video steps' draws do not depend on `image_every`."""
    gen, image_gen = torch.Generator().manual_seed(hp.seed), torch.Generator().manual_seed(hp.seed + 1)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    opt = teacher_optimizer(model, hp)
    sched = get_cosine_schedule_with_warmup(opt, hp.warmup_steps, hp.num_steps)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    ema = EMAModel(model.parameters(), decay=hp.ema_decay, update_after_step=hp.ema_start_step)
    model.train()
    bar = tqdm(range(hp.num_steps), desc="teacher", disable=not progress, mininterval=5)
    for step in bar:
        images = hp.image_every > 0 and (step + 1) % hp.image_every == 0
        batch = training_batch(latents, prompt_index, prompt_embeds, uncond_embed, hp,
                               image_gen if images else gen, images)
        loss = flow_matching_loss(model, *(t.to(accelerator.device) for t in batch))
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # before backward: a NaN must not reach the weights or the EMA
            raise FloatingPointError(f"teacher loss became {loss_value} at step {step}")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), hp.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        lrs = sched.get_last_lr()  # Muon's group first when hp.optimizer == "muon", AdamW's last
        metrics = {"teacher/image_loss" if images else "teacher/loss": loss_value, "teacher/grad_norm": float(grad_norm),
                   "teacher/lr": lrs[-1], "teacher/ema_decay": ema.cur_decay_value or 0.0}
        if hp.optimizer == "muon":
            metrics["teacher/muon_lr"] = lrs[0]
        log(metrics, step)
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    model = accelerator.unwrap_model(model)
    ema.copy_to(model.parameters())
    return model.eval()
