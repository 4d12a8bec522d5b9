"""LoRA through peft on exact module names (recipe §4.1): attach, select trainable parameters, save/load
as safetensors, merge into the base weights.

Targets are module names matched as whole dotted suffixes (peft's list semantics): `attn1.to_q` adapts
`blocks.N.attn1.to_q` in every block but never `attn2.to_q`. A target that matches no `nn.Linear` is an
error, not a silent no-op. lora_B starts at zero, so attaching changes no output; lora_A's random init is
drawn from a seeded generator, so a training run is reproducible bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from anyflow.checkpoint import load_tensors, save_tensors

SELF_ATTENTION_FFN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")
TIME_EMBEDDERS = ("condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2",
                  "condition_embedder.delta_embedder.linear_1", "condition_embedder.delta_embedder.linear_2")


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """Rank, alpha (scale alpha/rank) and exact target module names of one adapter."""

    rank: int = 32
    alpha: float = 32.0
    targets: tuple[str, ...] = SELF_ATTENTION_FFN

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")
        if not self.targets:
            raise ValueError("LoRA targets must not be empty")


def _check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in linears):
            raise ValueError(f"LoRA target {target!r} matches no nn.Linear module of {type(model).__name__}")


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA A/B parameters of every adapter on `model`."""
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def attach_lora(model: nn.Module, spec: LoraSpec, adapter_name: str = "default", *, seed: int = 0
                ) -> list[nn.Parameter]:
    """Add a LoRA adapter, freeze everything else; return the trainable (LoRA) parameters.

    peft draws lora_A (kaiming-uniform) from torch's global CPU generator before moving the adapter to the
    base layer's device; an unseeded draw made every run start from different weights. The draw is seeded
    here on a forked CPU generator, so the caller's global RNG state is left as it was."""
    _check_targets(model, spec.targets)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model.add_adapter(PeftLoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets),
                                         lora_dropout=0.0, bias="none", init_lora_weights=True), adapter_name)
    model.requires_grad_(False)
    params = lora_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return params


def save_lora(model: nn.Module, path: str | Path, spec: LoraSpec, adapter_name: str = "default") -> Path:
    """Write the adapter's weights (peft key names) and its spec to one safetensors file, atomically."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return save_tensors(state, path, metadata={"lora_spec": asdict(spec), "adapter_name": adapter_name})


def load_lora(model: nn.Module, path: str | Path, adapter_name: str = "default", *,
              extra_targets: tuple[str, ...] = (), seed: int = 0) -> LoraSpec:
    """Attach (if needed) and load an adapter written by `save_lora`; return its spec. Exact: every key must load.

    `extra_targets` widens the adapter to more modules (e.g. the cross-attention a fine-tune on new words needs):
    their lora_B starts at zero, so the loaded model computes exactly what the file's adapter did; the returned
    spec lists them too, so `save_lora` writes the widened adapter."""
    state, meta = load_tensors(path)
    if not meta or "lora_spec" not in meta:
        raise ValueError(f"{path} is not a LoRA file written by anyflow (no lora_spec metadata)")
    spec = LoraSpec(**{**meta["lora_spec"], "targets": tuple(meta["lora_spec"]["targets"])})
    new = tuple(t for t in dict.fromkeys(extra_targets) if t not in spec.targets)
    spec = replace(spec, targets=spec.targets + new)
    if adapter_name not in getattr(model, "peft_config", {}):
        attach_lora(model, spec, adapter_name, seed=seed)
    elif new:
        raise ValueError(f"adapter {adapter_name!r} is already attached: it cannot be widened to {list(new)}")
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise ValueError(f"{path}: keys not in the model: {sorted(result.unexpected_keys)[:5]}")
    missing = [k for k in result.missing_keys if ".lora_" in k and f".{adapter_name}." in k
               and not any(f"{t}.lora_" in k for t in new)]
    if missing:
        raise ValueError(f"{path}: adapter {adapter_name!r} weights missing from the file: {missing[:5]}")
    return spec


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into the base weights (W += (alpha/rank)·B·A) and remove the LoRA layers."""
    model.fuse_lora()
    model.unload_lora()
    return model
