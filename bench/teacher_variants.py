"""Short toy-teacher builds with a training variant that no config field expresses, then `bench/teacher.py`.

    .venv/bin/python bench/teacher_variants.py --variant images [--variant muon ...] [bench/teacher.py args]

The variants are patched into this process only (the teacher's code closure, and so the shipped teacher's
cache key, stays as it is); docs/toy-experiments.md ("Short teacher builds") records what each one gave.

- `zeroinit`: every residual branch's output projection (self- and cross-attention out, FFN out) and the
  final `proj_out` start at zero, so each block starts as the identity (DiT's adaLN-Zero idea).
- `muon`: Muon (torch.optim.Muon, lr `--muon-lr`, momentum 0.95) on the blocks' 2-D weight matrices, AdamW as
  configured on everything else (embeddings, output head, norms, biases, modulation tables).
- `images`: joint image-video training as Wan does it: every `--image-every`-th step trains on "images", the
  first latent frame of training videos (Wan's causal frame 0 encodes pixel frame 0 alone), five times as
  many as the batch's videos, so the step costs the same 80 tokens per sample slot.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

import anyflow.teacher as teacher
import anyflow.toybuild as toybuild

VARIANTS = ("zeroinit", "muon", "images")


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


def use_muon(muon_lr: float) -> None:
    adamw = torch.optim.AdamW

    class MuonAdamW(torch.optim.Optimizer):
        """Muon on the tagged hidden matrices, AdamW on the rest; one param_groups list for the LR scheduler."""

        def __init__(self, params, lr, weight_decay=0.0, betas=(0.9, 0.99)):  # noqa: D107 (AdamW's signature)
            params = list(params)
            hidden = [p for p in params if getattr(p, "_muon", False)]
            rest = [p for p in params if not getattr(p, "_muon", False)]
            self.muon = torch.optim.Muon(hidden, lr=muon_lr, weight_decay=weight_decay, momentum=0.95)
            self.adam = adamw(rest, lr=lr, weight_decay=weight_decay, betas=betas)
            self.defaults, self.state = {}, {}
            print(f"[variant muon] Muon on {len(hidden)} matrices, AdamW on {len(rest)} tensors", flush=True)

        @property
        def param_groups(self):  # live: accelerate's load_state_dict replaces the inner optimizers' group dicts
            return self.muon.param_groups + self.adam.param_groups

        def step(self, closure=None):
            self.muon.step()
            self.adam.step()

        def zero_grad(self, set_to_none=True):
            self.muon.zero_grad(set_to_none)
            self.adam.zero_grad(set_to_none)

        def state_dict(self):
            return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

        def load_state_dict(self, state):
            self.muon.load_state_dict(state["muon"])
            self.adam.load_state_dict(state["adam"])

    def tag(model) -> None:
        for name, p in model.blocks.named_parameters():
            if p.ndim == 2 and "scale_shift" not in name:
                p._muon = True

    _wrap_build(tag)
    torch.optim.AdamW = MuonAdamW  # this process only: train_teacher builds its optimizer as torch.optim.AdamW


def mix_images(every: int) -> None:
    data = {}
    train = toybuild.train_teacher

    def stash(model, latents, prompt_index, prompt_embeds, uncond_embed, hp, *args, **kwargs):
        data.update(latents=latents, index=prompt_index, embeds=prompt_embeds, uncond=uncond_embed, hp=hp,
                    gen=torch.Generator().manual_seed(hp.seed + 1), calls=0)
        return train(model, latents, prompt_index, prompt_embeds, uncond_embed, hp, *args, **kwargs)

    loss = teacher.flow_matching_loss

    def mixed(model, x0, text, sigma, eps):
        data["calls"] += 1
        if data["calls"] % every:
            return loss(model, x0, text, sigma, eps)
        gen, n = data["gen"], x0.shape[0] * x0.shape[2]
        idx = torch.randint(0, len(data["latents"]), (n,), generator=gen)
        images = data["latents"][idx][:, :, :1]
        text = data["embeds"][data["index"][idx]]
        drop = torch.rand(n, generator=gen) < data["hp"].text_dropout
        text = torch.where(drop.view(-1, 1, 1), data["uncond"], text)
        sigma = teacher.sample_sigma(n, data["hp"], gen)
        return loss(model, images, text, sigma, torch.randn(images.shape, generator=gen))

    toybuild.train_teacher = stash
    teacher.flow_matching_loss = mixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    ap.add_argument("--variant", action="append", choices=VARIANTS, required=True)
    ap.add_argument("--muon-lr", type=float, default=0.02)
    ap.add_argument("--image-every", type=int, default=2)
    if {"-h", "--help"} & set(sys.argv[1:]) and "--variant" not in sys.argv:
        raise SystemExit(__doc__ + f"\nvariants: {', '.join(VARIANTS)}; every other argument goes to bench/teacher.py")
    args, rest = ap.parse_known_args()
    if args.image_every < 1:
        raise SystemExit(f"--image-every must be >= 1, got {args.image_every}")
    if "zeroinit" in args.variant:
        _wrap_build(zero_init)
    if "muon" in args.variant:
        use_muon(args.muon_lr)
    if "images" in args.variant:
        mix_images(args.image_every)
    print(f"[variants] {', '.join(args.variant)}", flush=True)
    script = Path(__file__).with_name("teacher.py")
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
