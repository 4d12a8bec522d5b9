"""Build the toy teacher end to end: fit the VAE, build tokenizer + text encoder, render and encode a
cached training set, train the transformer, save a Diffusers `WanPipeline` folder.

The folder is a real Wan2.1 layout (model_index.json, transformer/, vae/, text_encoder/, tokenizer/,
scheduler/); the VAE entry points at `anyflow.vae.LinearPatchVAE`, which diffusers imports by module
path. DESIGN §4.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from tqdm.auto import tqdm

from anyflow import toyworld
from anyflow.teacher import LogFn, TeacherArch, TeacherTrainHparams, build_transformer, train_teacher
from anyflow.text import TextEncoderSpec, build_text_encoder, build_tokenizer
from anyflow.toyworld import WorldSpec
from anyflow.vae import LinearPatchVAE, pixels_to_vae
from anyflow.wan import TOY_SPEC_FILE


@dataclass(frozen=True, kw_only=True)
class ToyTeacherSpec:
    """Everything that determines the toy teacher (its hash names the artifact)."""

    world: WorldSpec = field(default_factory=WorldSpec)
    text: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    arch: TeacherArch = field(default_factory=TeacherArch)
    train: TeacherTrainHparams = field(default_factory=TeacherTrainHparams)
    vae_z_dim: int = 16
    num_vae_fit_videos: int = 2000    # per domain (the VAE also sees the downstream domain, like a real VAE)
    num_train_videos: int = 20000     # rendered once and cached as latents
    sample_shift: float = 3.0         # FlowMatchEulerDiscreteScheduler shift saved with the pipeline
    data_seed: int = 0


@dataclass
class ToyComponents:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: LinearPatchVAE


def build_components(spec: ToyTeacherSpec) -> ToyComponents:
    """Tokenizer, frozen text encoder and PCA VAE (fitted on both domains, seeded)."""
    tokenizer = build_tokenizer(toyworld.vocabulary())
    text_encoder = build_text_encoder(len(tokenizer), spec.text)
    videos = np.concatenate([
        toyworld.render_batch(toyworld.sample_conditions(spec.num_vae_fit_videos, spec.data_seed + 1, d, spec.world), spec.world)
        for d in ("base", "downstream")
    ])
    vae = LinearPatchVAE.fit(videos, z_dim=spec.vae_z_dim)
    return ToyComponents(tokenizer, text_encoder, vae)


def text_pipeline(components: ToyComponents) -> WanPipeline:
    """A WanPipeline holding only the text stack, to reuse diffusers' exact prompt encoding."""
    return WanPipeline(tokenizer=components.tokenizer, text_encoder=components.text_encoder,
                       vae=None, scheduler=None, transformer=None)


@torch.no_grad()
def encode_prompts(components: ToyComponents, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """Prompt embeddings [P, S, D], cut to real tokens and zero-padded (WanPipeline.encode_prompt)."""
    embeds, _ = text_pipeline(components).encode_prompt(
        prompts, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device="cpu"
    )
    return embeds


@torch.no_grad()
def encode_videos(vae: LinearPatchVAE, videos: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Normalised latents [N, C, L, h, w] = (μ − mean_c) / std_c, as every Wan trainer does (recipe §1.3)."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    out = []
    for i in range(0, len(videos), batch_size):
        mu = vae._encode(pixels_to_vae(videos[i:i + batch_size])).chunk(2, dim=1)[0]
        out.append((mu - mean) / std)
    return torch.cat(out)


def training_set(spec: ToyTeacherSpec, components: ToyComponents):
    """Render `num_train_videos` base-domain videos once; return (latents, prompt_index, prompt_embeds, uncond)."""
    conds = toyworld.sample_conditions(spec.num_train_videos, spec.data_seed, "base", spec.world)
    prompts = sorted({c.prompt for c in conds})
    row = {p: i for i, p in enumerate(prompts)}
    latents = torch.cat([
        encode_videos(components.vae, toyworld.render_batch(conds[i:i + 1000], spec.world))
        for i in tqdm(range(0, len(conds), 1000), desc="render+encode", mininterval=5)
    ])
    prompt_index = torch.tensor([row[c.prompt] for c in conds])
    embeds = encode_prompts(components, prompts + [""], spec.text.max_sequence_length)
    return latents, prompt_index, embeds[:-1], embeds[-1:]


def build_toy_teacher(spec: ToyTeacherSpec, out_dir: Path, log: LogFn = lambda m, s: None,
                      progress: bool = True) -> Path:
    """Build and save the toy teacher as a WanPipeline folder at `out_dir`; return the folder."""
    components = build_components(spec)
    latents, prompt_index, prompt_embeds, uncond = training_set(spec, components)
    transformer = build_transformer(spec.arch, spec.vae_z_dim, spec.text.d_model, seed=spec.train.seed)
    transformer = train_teacher(transformer, latents, prompt_index, prompt_embeds, uncond, spec.train, log, progress)
    pipe = WanPipeline(
        tokenizer=components.tokenizer, text_encoder=components.text_encoder, vae=components.vae,
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=spec.sample_shift),
    )
    pipe.save_pretrained(out_dir)
    (Path(out_dir) / TOY_SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))
    return Path(out_dir)


def toy_world_of(folder: str | Path) -> WorldSpec | None:
    """The toy world a toy teacher folder was built for, or None for any other Wan folder."""
    path = Path(folder) / TOY_SPEC_FILE
    return WorldSpec(**json.loads(path.read_text())["world"]) if path.is_file() else None
