"""The training loop every stage shares (recipe §4.2-4.4): accelerate, AdamW over the trainable parameters,
linear warm-up then constant LR, gradient clipping, EMA of the trainable parameters, periodic checkpoints
with exact resume, metrics through `log`, a progress bar. Each stage supplies its step function.

Exact resume: a checkpoint holds accelerate's `save_state` (model, optimizer, scheduler, every process's RNG
states), the EMA shadow weights, every process's own step generator state (safetensors), and `progress.json`
(step, data position). A run restarted from it, with one process or several, draws the same batches and noise
and reproduces the uninterrupted loss curve. Checkpoints are written to a temporary directory and renamed
into place; the last two are kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from anyflow.checkpoint import load_tensors, save_tensors

LogFn = Callable[[Mapping[str, float], int], None]
# step(model, batch, generator) -> (loss to backpropagate, metrics to log); `model` is the prepared
# (possibly DistributedDataParallel-wrapped) module, which must be the one called for gradients to sync
StepFn = Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
# batches(start_position) -> iterator of batches, each with a `.position` (samples consumed after it)
BatchSource = Callable[[int], Iterator[Any]]


@dataclass(frozen=True, kw_only=True)
class LoopSpec:
    num_steps: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_start_step: int = 0            # the EMA copies the weights until this step (recipe §4.3)
    ema_ramp: bool = False             # False: decay ema_decay from then on (recipe §4.3); True: diffusers' default
                                       # warm-up min(ema_decay, (1 + n) / (10 + n)), n steps after the start
    checkpoint_every: int = 100
    seed: int = 0
    name: str = "train"                # metric prefix and progress-bar label


def _latest(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / "latest.json"
    if not pointer.is_file():
        return None
    path = ckpt_dir / json.loads(pointer.read_text())["dir"]
    return path if (path / "progress.json").is_file() else None


def _save(accelerator: Accelerator, ckpt_dir: Path, step: int, position: int, ema: EMAModel,
          generator: torch.Generator) -> None:
    name = f"step-{step:07d}"
    tmp = ckpt_dir / f".{name}.tmp"
    # accelerate's save_state has no barrier of its own: without these, one process could clear `tmp` while
    # another writes into it, or the main process could rename it before the others' RNG states are in.
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)       # each process writes its own RNG states
    save_tensors({"state": generator.get_state()}, tmp / f"generator-{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_tensors({f"shadow.{i}": p for i, p in enumerate(ema.shadow_params)}, tmp / "ema.safetensors",
                     metadata={"optimization_step": ema.optimization_step})
        (tmp / "progress.json").write_text(json.dumps({"step": step, "position": position}))
        os.replace(tmp, ckpt_dir / name)
        pointer = ckpt_dir / "latest.json.tmp"
        pointer.write_text(json.dumps({"dir": name}))
        os.replace(pointer, ckpt_dir / "latest.json")
        for old in sorted(ckpt_dir.glob("step-*"))[:-2]:
            shutil.rmtree(old)


@contextmanager
def _ema_weights(ema: EMAModel, params: list[torch.nn.Parameter]) -> Iterator[None]:
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


@dataclass
class Update:
    """One optimiser step per iteration (or every `every` iterations) of `params` of `model` by `step`,
    each on its own batch. Exactly one update of a loop may own the EMA."""

    name: str                          # metric prefix
    model: torch.nn.Module
    params: list
    step: StepFn
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    every: int = 1
    ema: bool = False


def train(model: torch.nn.Module, params: list[torch.nn.Parameter], step_fn: StepFn, batches: BatchSource,
          spec: LoopSpec, ckpt_dir: str | Path, log: LogFn = lambda m, s: None, progress: bool = True,
          accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train `params` of `model` for `spec.num_steps` (resuming from `ckpt_dir` if it holds a checkpoint);
    leave the EMA weights in `model`. Returns a summary."""
    update = Update(spec.name, model, params, step_fn, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay,
                    warmup_steps=spec.warmup_steps, grad_clip=spec.grad_clip, ema=True)
    return train_updates([update], batches, spec, ckpt_dir, log, progress, accelerator)


def train_updates(updates: list[Update], batches: BatchSource, spec: LoopSpec, ckpt_dir: str | Path,
                  log: LogFn = lambda m, s: None, progress: bool = True,
                  accelerator: Accelerator | None = None,
                  after_step: Callable[[int, Callable[[], AbstractContextManager]], None] | None = None
                  ) -> dict[str, Any]:
    """The loop with several alternating updates (stage 2: generator, then critic), each drawing its own
    batch; the data position in checkpoints counts every batch drawn. The EMA owner's EMA weights are left
    in its model. `after_step(steps_done, ema_weights)` runs on the main process after every iteration
    (previews, probes); `with ema_weights():` holds the EMA weights in the owner's model and restores the
    trained ones exactly on exit. It must not touch the loop's generator or change the weights. Returns a
    summary (the first update's losses)."""
    if any(not u.params for u in updates):
        raise ValueError(f"train: no trainable parameters for {[u.name for u in updates if not u.params]}")
    owners = [u for u in updates if u.ema]
    if len(owners) != 1:
        raise ValueError("train: exactly one update must own the EMA")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    opts = [torch.optim.AdamW(u.params, lr=u.lr, betas=u.betas, weight_decay=u.weight_decay) for u in updates]
    scheds = [get_constant_schedule_with_warmup(o, u.warmup_steps) for o, u in zip(opts, updates)]
    prepared = accelerator.prepare(*[u.model for u in updates], *opts, *scheds)
    n = len(updates)
    models, opts, scheds = list(prepared[:n]), list(prepared[n:2 * n]), list(prepared[2 * n:])
    owner = owners[0]
    # EMAModel ramps its decay by default; min_decay = decay turns the ramp off (a 400-step stage with
    # decay 0.99 would otherwise never pass 0.975)
    ema = EMAModel(owner.params, decay=spec.ema_decay, min_decay=0.0 if spec.ema_ramp else spec.ema_decay,
                   update_after_step=spec.ema_start_step)
    generator = torch.Generator().manual_seed(spec.seed + accelerator.process_index)
    start, position = 0, 0
    resume = _latest(ckpt_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        shadow, meta = load_tensors(resume / "ema.safetensors")
        ema.shadow_params = [shadow[f"shadow.{i}"].to(p.device) for i, p in enumerate(owner.params)]
        ema.optimization_step = meta["optimization_step"]
        generator.set_state(load_tensors(resume / f"generator-{accelerator.process_index}.safetensors")[0]["state"])
        progress_state = json.loads((resume / "progress.json").read_text())
        start, position = progress_state["step"], progress_state["position"]
    data = batches(position)
    for m in models:
        m.train()
    bar = tqdm(range(start, spec.num_steps), initial=start, total=spec.num_steps, desc=spec.name,
               disable=not (progress and accelerator.is_main_process), mininterval=5)
    losses, t0, samples = [], time.time(), 0
    for step in bar:
        for u, model, opt, sched in zip(updates, models, opts, scheds):
            if step % u.every:
                continue
            batch = next(data)
            loss, metrics = u.step(model, batch, generator)
            value = float(accelerator.reduce(loss.detach(), reduction="mean")) if accelerator.num_processes > 1 \
                else float(loss.detach())
            if not math.isfinite(value):     # before backward: a NaN must not reach the weights or the EMA
                raise FloatingPointError(f"{u.name} loss became {value} at step {step}")
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(u.params, u.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if u is owner:
                ema.step(u.params)
            position = batch.position
            if u is updates[0]:
                losses.append(value)
                samples += (len(getattr(batch, "prompts", [])) or 1) * accelerator.num_processes
            if accelerator.is_main_process:
                extra = {f"{u.name}/ema_decay": ema.cur_decay_value or 0.0} if u is owner else {}
                log({f"{u.name}/loss": value, f"{u.name}/grad_norm": float(grad_norm),
                     f"{u.name}/lr": sched.get_last_lr()[0], **extra,
                     f"{u.name}/samples_per_s": samples / max(time.time() - t0, 1e-9),
                     **{f"{u.name}/{k}": v for k, v in metrics.items() if math.isfinite(v)}}, step)
            if u is updates[0]:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if (step + 1) % spec.checkpoint_every == 0 or step + 1 == spec.num_steps:
            _save(accelerator, ckpt_dir, step + 1, position, ema, generator)
        if after_step is not None and accelerator.is_main_process:
            after_step(step + 1, lambda: _ema_weights(ema, owner.params))
    accelerator.wait_for_everyone()
    ema.copy_to(owner.params)
    tail = losses[-50:]
    return {"steps": spec.num_steps, "resumed_from": start, "final_loss": sum(tail) / len(tail) if tail else None,
            "samples_per_s": round(samples / max(time.time() - t0, 1e-9), 2), "losses": losses}
