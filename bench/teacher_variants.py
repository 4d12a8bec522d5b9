"""Short toy-teacher builds with a training variant that no config field expresses, then `bench/teacher.py`.

    .venv/bin/python bench/teacher_variants.py --variant zeroinit [bench/teacher.py args]

The variants are patched into this process only (the teacher's code closure, and so the shipped teacher's
cache key, stays as it is); docs/toy-experiments.md ("Short teacher builds") records what each one gave.

- `zeroinit`: every residual branch's output projection (self- and cross-attention out, FFN out) and the
  final `proj_out` start at zero, so each block starts as the identity (DiT's adaLN-Zero idea).

Muon and joint image-video training began here as variants and are now config fields:
`--set teacher.toy.train.optimizer=muon [--set teacher.toy.train.muon_lr=0.02] --set teacher.toy.train.image_every=2`.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

import anyflow.toybuild as toybuild

VARIANTS = ("zeroinit",)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    ap.add_argument("--variant", action="append", choices=VARIANTS, required=True)
    if {"-h", "--help"} & set(sys.argv[1:]) and "--variant" not in sys.argv:
        raise SystemExit(__doc__ + f"\nvariants: {', '.join(VARIANTS)}; every other argument goes to bench/teacher.py")
    args, rest = ap.parse_known_args()
    if "zeroinit" in args.variant:
        _wrap_build(zero_init)
    print(f"[variants] {', '.join(args.variant)}", flush=True)
    script = Path(__file__).with_name("teacher.py")
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
