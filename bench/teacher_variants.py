"""Short toy-teacher builds with a training variant that no config field expresses, then `bench/teacher.py`.

    .venv/bin/python bench/teacher_variants.py --variant zeroinit [bench/teacher.py args]

The variants are patched into this process only (the teacher's code closure, and so the shipped teacher's
cache key, stays as it is); docs/toy-experiments.md ("Short teacher builds") records what each one gave.
The cache key does not see a variant either, so give each variant build its own `--set paths.root=...`.

- `zeroinit`: every residual branch's output projection (self- and cross-attention out, FFN out) and the
  final `proj_out` start at zero, so each block starts as the identity (DiT's adaLN-Zero idea).
- `objectweight`: the flow-matching loss weighs the latent pixels that show the object `--object-weight`
  times (default 4) as much as the background's, normalised to the same mean weight. The object's latent
  pixels are found in x₀ itself: those farther than `--object-threshold` (default 0.25, RMS over channels)
  from their frame's median latent pixel, which is the background's (the object covers at most a quarter
  of a frame).

Muon and joint image-video training began here as variants and are now config fields:
`--set teacher.toy.train.optimizer=muon [--set teacher.toy.train.muon_lr=0.02] --set teacher.toy.train.image_every=2`.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

import anyflow.teacher as teacher
import anyflow.toybuild as toybuild

VARIANTS = ("zeroinit", "objectweight")


def _wrap_build(edit) -> None:
    build = toybuild.build_transformer

    def wrapped(*args, **kwargs):
        model = build(*args, **kwargs)
        edit(model)
        return model

    toybuild.build_transformer = wrapped


def zero_init(model) -> None:
    with torch.no_grad():
        for block in model.blocks:
            for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
                linear.weight.zero_()
                linear.bias.zero_()
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()


def object_mask(x0: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, 1, L, h, w] 1.0 where a latent pixel differs from its frame's median (background) pixel by more than
    `threshold` (RMS over the C channels of the normalised latent), else 0.0."""
    background = x0.flatten(3).median(dim=3).values[..., None, None]   # [B, C, L, 1, 1]
    distance = (x0 - background).pow(2).mean(dim=1, keepdim=True).sqrt()
    return (distance > threshold).float()


def object_weighted_loss(weight: float, threshold: float):
    """`anyflow.teacher.flow_matching_loss` with each latent pixel's squared error weighted 1 on the background
    and `weight` on the object (`object_mask`), divided by the batch's mean weight. It restates that loss's
    noising and target rather than adding a weight argument there: anyflow/teacher.py is in the shipped
    teacher's code closure, and any edit to it re-keys the prebuilt asset."""

    def loss(model, x0, text, sigma, eps):
        s = sigma.view(-1, 1, 1, 1, 1)
        v = teacher.teacher_velocity(model, (1 - s) * x0 + s * eps, sigma, text)
        w = 1.0 + (weight - 1.0) * object_mask(x0, threshold)
        return (w * (v.float() - (eps - x0).float()) ** 2).mean() / w.mean()

    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    ap.add_argument("--variant", action="append", choices=VARIANTS, required=True)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument("--object-threshold", type=float, default=0.25)
    if {"-h", "--help"} & set(sys.argv[1:]) and "--variant" not in sys.argv:
        raise SystemExit(__doc__ + f"\nvariants: {', '.join(VARIANTS)}; every other argument goes to bench/teacher.py")
    args, rest = ap.parse_known_args()
    if not any(a.startswith("paths.root=") for a in rest):
        ap.error("give the variant build its own --set paths.root=DIR: the cache key does not see the variant, "
                 "so the default root would hand this build to (or take it from) the plain config")
    if "zeroinit" in args.variant:
        _wrap_build(zero_init)
    if "objectweight" in args.variant:
        # train_teacher looks the loss up in its module at every step
        teacher.flow_matching_loss = object_weighted_loss(args.object_weight, args.object_threshold)
    print(f"[variants] {', '.join(args.variant)}", flush=True)
    script = Path(__file__).with_name("teacher.py")
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
