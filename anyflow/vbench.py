"""VBench for real models on GPUs (reference/evaluation.md §1): pre-flight checks, the subprocess run in
VBench's own environment, and the official aggregation.

VBench's pins clash with the training stack (transformers 4.33, numpy < 2, pyiqa 0.1.10), so it runs as
a subprocess with its own Python (`VBenchSpec.python`), reading mp4s we write and weights pre-placed
under `VBENCH_CACHE_DIR` (`load_ckpt_from_local`: no downloads). Every score is recorded with the VBench
variant, prompt set, seeds and samples per prompt. Aggregation: n_d = (raw − Min) / (Max − Min) times the
dimension weight; Quality = Σ_Q / 6.5, Semantic = Σ_S / 9, Total = (4Q + S) / 5. The official script does
not clip raw values; AnyFlow's variant clips them to [Min, Max] first. Both are reported; the headline is
the official one.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# dimension: (Min, Max, weight, group) — VBench scripts/constant.py
DIMENSIONS: dict[str, tuple[float, float, float, str]] = {
    "subject_consistency": (0.1462, 1.0, 1.0, "quality"),
    "background_consistency": (0.2615, 1.0, 1.0, "quality"),
    "temporal_flickering": (0.6293, 1.0, 1.0, "quality"),
    "motion_smoothness": (0.706, 0.9975, 1.0, "quality"),
    "dynamic_degree": (0.0, 1.0, 0.5, "quality"),
    "aesthetic_quality": (0.0, 1.0, 1.0, "quality"),
    "imaging_quality": (0.0, 1.0, 1.0, "quality"),
    "object_class": (0.0, 1.0, 1.0, "semantic"),
    "multiple_objects": (0.0, 1.0, 1.0, "semantic"),
    "human_action": (0.0, 1.0, 1.0, "semantic"),
    "color": (0.0, 1.0, 1.0, "semantic"),
    "spatial_relationship": (0.0, 1.0, 1.0, "semantic"),
    "scene": (0.0, 0.8222, 1.0, "semantic"),
    "appearance_style": (0.0009, 0.2855, 1.0, "semantic"),
    "temporal_style": (0.0, 0.364, 1.0, "semantic"),
    "overall_consistency": (0.0, 0.364, 1.0, "semantic"),
}
QUALITY_DIVISOR, SEMANTIC_DIVISOR = 6.5, 9.0

# weight files (relative to VBENCH_CACHE_DIR) each dimension loads — evaluation.md §1.8
_CLIP_B, _CLIP_L = "clip_model/ViT-B-32.pt", "clip_model/ViT-L-14.pt"
_GRIT = "grit_model/grit_b_densecap_objectdet.pth"
_VICLIP = ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz")
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main/hubconf.py", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": (_CLIP_B,),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": (_CLIP_L, "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "object_class": (_GRIT,), "multiple_objects": (_GRIT,), "color": (_GRIT,), "spatial_relationship": (_GRIT,),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "scene": ("caption_model/tag2text_swin_14m.pth",),
    "appearance_style": (_CLIP_B,),
    "temporal_style": _VICLIP, "overall_consistency": _VICLIP,
}


@dataclass(frozen=True, kw_only=True)
class VBenchSpec:
    python: str = ""                          # the VBench environment's interpreter
    cache_dir: str = ""                       # VBENCH_CACHE_DIR ("" → $VBENCH_CACHE_DIR)
    variant: str = "vbench"                   # "vbench" (standard) or "vbench-long"; printed with every score
    dimensions: tuple[str, ...] = tuple(DIMENSIONS)
    prompts: str = "vbench-standard"          # prompt set name recorded with the scores
    samples_per_prompt: int = 5
    seed: int = 0

    def __post_init__(self):
        unknown = [d for d in self.dimensions if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown VBench dimensions {unknown}; known: {list(DIMENSIONS)}")
        if self.variant not in ("vbench", "vbench-long"):
            raise ValueError(f"VBench variant must be 'vbench' or 'vbench-long', got {self.variant!r}")


class VBenchUnavailable(RuntimeError):
    """VBench cannot run here; the message lists everything missing."""


def missing_requirements(spec: VBenchSpec) -> list[str]:
    """Everything a VBench run needs that is not present (empty list: ready)."""
    missing = []
    if not spec.python or not Path(spec.python).is_file():
        missing.append(f"VBench python interpreter (evaluation.vbench.python = {spec.python!r})")
    cache = spec.cache_dir or os.environ.get("VBENCH_CACHE_DIR", "")
    if not cache:
        missing.append("VBENCH_CACHE_DIR (evaluation.vbench.cache_dir or the environment variable)")
        return missing
    for rel in sorted({f for d in spec.dimensions for f in REQUIRED_FILES[d]}):
        if not (Path(cache) / rel).is_file():
            missing.append(str(Path(cache) / rel))
    return missing


def check_ready(spec: VBenchSpec) -> None:
    missing = missing_requirements(spec)
    if missing:
        raise VBenchUnavailable("VBench cannot run on this machine; missing:\n  " + "\n  ".join(missing) +
                                "\n(the toy default uses ToyBench and never needs VBench)")


def aggregate(raw: dict[str, float], clip: bool = False) -> dict[str, float]:
    """Quality / Semantic / Total from raw dimension scores (all 16 needed for Total)."""
    norm = {}
    for dim, value in raw.items():
        lo, hi, weight, _ = DIMENSIONS[dim]
        v = min(max(value, lo), hi) if clip else value
        norm[dim] = (v - lo) / (hi - lo) * weight
    out = {f"norm_{d}": v for d, v in norm.items()}
    quality = [d for d, (_, _, _, g) in DIMENSIONS.items() if g == "quality"]
    semantic = [d for d, (_, _, _, g) in DIMENSIONS.items() if g == "semantic"]
    if all(d in norm for d in quality):
        out["quality"] = sum(norm[d] for d in quality) / QUALITY_DIVISOR
    if all(d in norm for d in semantic):
        out["semantic"] = sum(norm[d] for d in semantic) / SEMANTIC_DIVISOR
    if "quality" in out and "semantic" in out:
        out["total"] = (4 * out["quality"] + out["semantic"]) / 5
    return out


def write_videos(generate, prompts: list[str], out_dir: str | Path, samples_per_prompt: int, seed: int,
                 fps: int = 16) -> Path:
    """mp4s named `{prompt}-{j}.mp4` (VBench's standard-suite naming) from `generate(prompts, seed) -> frames
    [B, F, H, W, 3]`; sample j of prompt i uses seed `seed + i·samples_per_prompt + j`. Needs imageio-ffmpeg
    (`pip install -e .[vbench]`)."""
    from diffusers.utils import export_to_video

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(prompts):
        if len(f"{prompt}-{samples_per_prompt}.mp4".encode()) > 255:
            raise ValueError(f"prompt {i} is too long for VBench's file naming (255 bytes): {prompt[:60]}...")
        frames = generate([prompt] * samples_per_prompt, seed + i * samples_per_prompt)
        for j, video in enumerate(frames):
            export_to_video(list(video), str(out_dir / f"{prompt}-{j}.mp4"), fps=fps)
    return out_dir


def read_results(path: str | Path) -> dict[str, float]:
    """VBench's `{name}_eval_results.json` ({dim: [aggregate, per-video...]}) → {dim: aggregate}."""
    data = json.loads(Path(path).read_text())
    return {dim: float(v[0] if isinstance(v, list) else v) for dim, v in data.items()}


def run(spec: VBenchSpec, videos_dir: str | Path, out_dir: str | Path, name: str = "anyflow") -> dict:
    """Run VBench (standard-suite naming) on `videos_dir` in its own environment; return scores + provenance."""
    check_ready(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VBENCH_CACHE_DIR": spec.cache_dir or os.environ["VBENCH_CACHE_DIR"], "HF_HUB_OFFLINE": "1"}
    runner = Path(__file__).with_name("vbench_runner.py")
    cmd = [spec.python, str(runner), str(videos_dir), str(out_dir), name, *spec.dimensions]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"VBench failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    results = sorted(out_dir.glob("*_eval_results.json"))
    if not results:
        raise RuntimeError(f"VBench wrote no *_eval_results.json under {out_dir}")
    raw = read_results(results[-1])
    return {"raw": raw, "official": aggregate(raw), "clipped": aggregate(raw, clip=True),
            "headline": "official", "variant": spec.variant, "prompts": spec.prompts,
            "samples_per_prompt": spec.samples_per_prompt, "seed": spec.seed}
