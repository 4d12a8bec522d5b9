"""The pipeline's typed configuration: one pydantic model per stage, composed into `PipelineConfig`.

Library hyperparameters (toy world, text encoder, teacher architecture and training) are the frozen
dataclasses that `anyflow` functions take, composed here so there is one source of truth; pydantic
validates them (unknown keys, types, `__post_init__` checks). Sections whose library code lands in later
issues (stage 1, stage 2, evaluation, fine-tuning) carry the recipe's constants (shared/reference/recipe.md).
Every model forbids unknown keys and is frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anyflow.lora import SELF_ATTENTION_FFN, TIME_EMBEDDERS, LoraSpec
from anyflow.toybuild import ToyTeacherSpec
from anyflow.toydomains import DOMAINS
from anyflow.vbench import VBenchSpec


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherConfig(Section):
    """Where the teacher comes from: the built-in toy world, or any Diffusers Wan2.1 folder."""

    source: Literal["toy", "path"] = "toy"
    path: str | None = None            # a WanPipeline folder (e.g. Wan2.1-T2V-1.3B-Diffusers) when source == "path"
    toy: ToyTeacherSpec = Field(default_factory=ToyTeacherSpec)  # used when source == "toy"
    negative_prompt: str = ""          # the unconditional branch (CFG, text dropout)
    prebuilt: bool = True              # toy: install the teacher shipped in assets/toy-teacher when it matches this
                                       # config and code (false: always train it)

    @model_validator(mode="after")
    def _path_given(self):
        if self.source == "path" and not self.path:
            raise ValueError("teacher.path is required when teacher.source is 'path'")
        return self


class SynthesisConfig(Section):
    """Teacher data synthesis: the teacher ODE with CFG -> webdataset shards of latents."""

    prompts: str = "toy"               # "toy", a .jsonl/.parquet/.txt file, or "hf:<dataset>[:<split>]"
    num_samples: int = Field(2048, ge=1)
    num_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(4.0, ge=1.0)
    batch_size: int = Field(64, ge=1)
    samples_per_shard: int = Field(256, ge=1)
    latent_dtype: Literal["float32", "float16"] = "float32"
    seed: int = 0


class Stage1Config(Section):
    """Forward flow-map training (recipe §6)."""

    num_steps: int = Field(2000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(targets=SELF_ATTENTION_FFN + TIME_EMBEDDERS))
    diffusion_ratio: float = Field(0.5, ge=0, le=1)    # r = t (flow matching)
    consistency_ratio: float = Field(0.25, ge=0, le=1)  # r = 0
    fused_guidance_scale: float = Field(3.0, ge=1.0)    # g in P = (u_c - (1-g) sg(u_0)) / g
    fd_delta: float = Field(0.005, gt=0)                # central-difference step, in sigma units
    adaptive_c: float = Field(1e-5, gt=0)
    gate_value: float = Field(0.25, ge=0, le=1)         # interpolated timestep conditioning
    text_dropout: float = Field(0.1, ge=0, lt=1)
    shift: float = Field(3.0, gt=0)
    velocity_target: Literal["data", "teacher"] = "data"  # teacher: regress the teacher's CFG velocity, not ε − x₀
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_start_step: int = Field(100, ge=0)
    ema_ramp: bool = False                              # True: diffusers' decay warm-up (README "Stage 1")
    checkpoint_every: int = Field(200, ge=1)
    num_processes: int = Field(1, ge=1)                 # > 1: accelerate launch with that many processes (gloo on CPU)
    gradient_checkpointing: bool = False                # recompute block activations in backward (memory, not result)
    seed: int = 0

    @model_validator(mode="after")
    def _ratios(self):
        if self.diffusion_ratio + self.consistency_ratio > 1:
            raise ValueError(
                f"stage1.diffusion_ratio + stage1.consistency_ratio must be <= 1, got "
                f"{self.diffusion_ratio} + {self.consistency_ratio}")
        return self


class TeacherTuneConfig(Section):
    """Optional teacher tuning (the reference's stage 0, recipe §5): LoRA flow matching of the teacher on the
    synthesized shards; the tuned teacher is stage 2's real score and critic initialisation."""

    enabled: bool = False
    num_steps: int = Field(500, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    lora: LoraSpec = Field(default_factory=LoraSpec)       # self-attention + FFN, as the reference
    shift: float = Field(3.0, gt=0)                        # logit-normal times, then this shift
    text_dropout: float = Field(0.1, ge=0, lt=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_start_step: int = Field(100, ge=0)
    ema_ramp: bool = False                              # True: diffusers' decay warm-up (README "Stage 1")
    checkpoint_every: int = Field(100, ge=1)
    gradient_checkpointing: bool = False
    seed: int = 0


def _increasing_nfes(field: str, v: tuple[int, ...]) -> tuple[int, ...]:
    if not v or list(v) != sorted(set(v)) or v[0] < 1:
        raise ValueError(f"{field} must be strictly increasing positive integers, got {list(v)}")
    return v


class Stage2Config(Section):
    """On-policy flow-map distillation: backward simulation + DMD (recipe §7)."""

    num_steps: int = Field(400, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-6, gt=0)                          # generator
    critic_lr: float = Field(2e-6, gt=0)
    betas: tuple[float, float] = (0.0, 0.999)              # both optimisers
    grad_clip: float = Field(1.0, gt=0)
    critic_lora: LoraSpec = Field(default_factory=LoraSpec)
    rollout_budgets: tuple[int, ...] = (2, 4, 8, 16, 50)   # the simulated step count s is drawn from these
    real_guidance_scale: float = Field(4.0, ge=1.0)        # uncond + w (cond - uncond); the research code's "3.0"
    dmd_weight: float = Field(1.0, ge=0)
    flowmap_weight: float = Field(1.0, ge=0)               # the stage-1 loss on data, added to the generator loss
    critic_updates_per_generator_update: int = Field(1, ge=1)
    preview_every: int = Field(50, ge=0)                   # sample sheet per NFE every N steps (0: off)
    preview_nfes: tuple[int, ...] = (1, 2, 4, 8)
    preview_prompts: int = Field(4, ge=1)                  # the first N evaluation prompts
    probe_every: int = Field(0, ge=0)                      # ToyBench Total per probe NFE every N steps (0: off)
    probe_nfes: tuple[int, ...] = (4, 16, 32)
    probe_prompts: int = Field(32, ge=2)                   # the first N evaluation prompts, the evaluation's noise
    ema_decay: float = Field(0.99, ge=0, lt=1)
    ema_start_step: int = Field(200, ge=0)
    ema_ramp: bool = False                                 # True: diffusers' decay warm-up (README "Stage 1")
    checkpoint_every: int = Field(100, ge=1)
    gradient_checkpointing: bool = False                   # generator and critic; memory, not result
    seed: int = 0

    @field_validator("rollout_budgets")
    @classmethod
    def _budgets(cls, v):
        if not v or any(s < 1 for s in v):
            raise ValueError(f"stage2.rollout_budgets must be non-empty positive step counts, got {v}")
        return v

    @field_validator("probe_nfes")
    @classmethod
    def _probe_nfes(cls, v):
        return _increasing_nfes("stage2.probe_nfes", v)


class EvaluationConfig(Section):
    """NFE sweep of the student and the teacher baselines with common random numbers."""

    backend: Literal["toybench", "vbench"] = "toybench"
    vbench: VBenchSpec = Field(default_factory=VBenchSpec)   # used when backend == "vbench" (GPU machines)
    nfe_list: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    num_prompts: int = Field(64, ge=1)
    seeds_per_prompt: int = Field(1, ge=1)
    teacher_guidance_scale: float = Field(4.0, ge=1.0)
    reference_steps: int = Field(50, ge=1)                 # the teacher's full-step CFG reference
    bootstrap_samples: int = Field(1000, ge=0)
    shift: float | None = Field(None, gt=0)                # sampling-grid shift of every model; None: stage1.shift
    seed: int = 1234
    consistency_baseline: bool = False                     # toybench: also sample the student consistency-style
                                                           # (jump to data, re-noise), the paper's contrast

    @field_validator("nfe_list")
    @classmethod
    def _nfe(cls, v):
        return _increasing_nfes("evaluation.nfe_list", v)


class FinetuneConfig(Section):
    """Optional downstream fine-tuning of the distilled student (forward flow-map loss; paper Fig. 7-8)."""

    enabled: bool = False
    domain: str = "purple"             # a toy domain (anyflow.toydomains: purple, bouncing) or a shard folder
    bench: str | None = None           # the toy domain whose DownstreamBench scores before/after (default: `domain`)
    num_samples: int = Field(1024, ge=1)                # rendered downstream videos (toy domain only)
    num_steps: int = Field(500, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    replay_fraction: float = Field(0.0, ge=0, lt=1)     # share of each batch replayed from the base domain
    replay_source: Literal["student", "data"] = "student"  # the distilled student's samples, or the synthesis shards
    replay_nfe: int = Field(4, ge=1)                    # student replay: its samples at this many steps
    replay_samples: int = Field(1024, ge=1)             # student replay: how many
    anchor_weight: float = Field(0.0, ge=0)             # > 0: replayed rows train the anchor (keep the distilled
                                                        # student's own few-step map) instead of the flow-map loss
    anchor_nfe: int = Field(4, ge=1)                    # the anchored sampler's step count
    # modules the distilled student's LoRA is widened to (zero-initialised): the stage-1/2 adapter has
    # self-attention + FFN only, which cannot re-read the prompt; a new word needs the cross-attention keys/values
    extra_lora_targets: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_start_step: int = Field(100, ge=0)
    ema_ramp: bool = False                              # True: diffusers' decay warm-up (README "Stage 1")
    checkpoint_every: int = Field(100, ge=1)
    nfe_list: tuple[int, ...] = (1, 2, 4, 8)            # downstream evaluation, before and after
    base_nfe_list: tuple[int, ...] = (4,)               # base-domain check: did fine-tuning forget?
    num_eval_prompts: int = Field(128, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _domain_and_bench(self):
        if self.domain not in DOMAINS and "/" not in self.domain and not Path(self.domain).is_dir():
            raise ValueError(f"finetune.domain={self.domain!r} is neither a toy downstream domain "
                             f"({', '.join(DOMAINS)}) nor a shard folder")
        if self.bench_domain not in DOMAINS:
            raise ValueError(f"finetune.bench={self.bench_domain!r}: the before/after evaluation scores one of the toy domains "
                             f"({', '.join(DOMAINS)}); set finetune.bench when finetune.domain is a shard folder")
        return self

    @property
    def bench_domain(self) -> str:
        return self.bench or self.domain

    @property
    def renders_toy_domain(self) -> bool:
        """True when `domain` names a toy downstream domain (rendered by the downstream_data stage)."""
        return self.domain in DOMAINS

    @model_validator(mode="after")
    def _anchor_needs_replay(self):
        if self.anchor_weight > 0 and self.replay_fraction == 0:
            raise ValueError(f"finetune.anchor_weight={self.anchor_weight} anchors the replayed base-domain rows: "
                             "set finetune.replay_fraction > 0")
        return self

    @field_validator("nfe_list", "base_nfe_list")
    @classmethod
    def _nfes(cls, v):
        if not v or any(n < 1 for n in v):
            raise ValueError(f"NFE lists must be non-empty positive step counts, got {v}")
        return v


class TrackingConfig(Section):
    experiment: str = ""               # "" → "anyflow-<name>": one experiment per pipeline name
    tracking_uri: str | None = None    # None: $MLFLOW_TRACKING_URI, else sqlite under paths.root


class PathsConfig(Section):
    root: str = "runs"                 # run folder: artifacts/, mlflow.db, prefect/

    @property
    def artifacts(self) -> Path:
        return Path(self.root) / "artifacts"


class PipelineConfig(Section):
    """The whole pipeline (DESIGN §1)."""

    name: str = "toy"
    seed: int = 0
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    teacher_tune: TeacherTuneConfig = Field(default_factory=TeacherTuneConfig)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)

    @model_validator(mode="after")
    def _toybench_only(self):
        """The settings that score ToyBench (the stage-2 probe, the consistency baseline) need the toy world's
        evaluation backend; every one that is on is named, with the value that turns it off."""
        if self.evaluation.backend == "toybench":
            return self
        used = {}                          # setting as given -> the value that turns it off
        if self.stage2.probe_every:
            used[f"stage2.probe_every={self.stage2.probe_every}"] = "stage2.probe_every=0"
        if self.evaluation.consistency_baseline:
            used["evaluation.consistency_baseline=true"] = "evaluation.consistency_baseline=false"
        if used:
            raise ValueError(f"{', '.join(used)} scores ToyBench, which needs the toy world; evaluation.backend is "
                             f"{self.evaluation.backend!r} (set {', '.join(used.values())})")
        return self
