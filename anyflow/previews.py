"""What people look at while a distillation runs: sample sheets per NFE, the any-step probe, and the drawn
rollout budgets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from anyflow.evaluation import initial_noise, run_sampler, student_sampler
from anyflow.media import contact_sheet, save_figure
from anyflow.wan import Teacher


@torch.no_grad()
def preview_sheet(student, teacher: Teacher, text: torch.Tensor, latent_shape: tuple[int, ...],
                  nfes: Sequence[int], shift: float, path: str | Path, seed: int = 0,
                  columns: Sequence[str] = ()) -> Path:
    """A PNG with one row per NFE: the student's videos for `text` [N, S, D] from fixed noise (the same
    noise at every NFE and every call, so rows and successive sheets are directly comparable)."""
    noise = initial_noise(len(text), tuple(latent_shape), seed)
    sampler = student_sampler(student, shift)
    rows = {f"{n} NFE": teacher.decode(run_sampler(sampler, noise, text, n, batch_size=len(text))) for n in nfes}
    return contact_sheet(rows, path, columns=columns)


def plot_budgets(draws: Sequence[tuple[int, int]], path: str | Path) -> Path:
    """Two panels: how often each simulated budget s was drawn, and where the trained step k fell within its
    rollout (k / s, which should be uniform on [0, 1) for every s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter(s for s, _ in draws)
    budgets = sorted(counts)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    left.bar([str(s) for s in budgets], [counts[s] for s in budgets], color="tab:blue")
    left.set_xlabel("simulated budget s (steps)")
    left.set_ylabel("generator updates")
    left.set_title(f"s draws (n = {len(draws)})", fontsize=9)
    for s in budgets:
        right.hist([k / s for ss, k in draws if ss == s], bins=10, range=(0, 1), histtype="step", label=f"s = {s}")
    right.set_xlabel("trained step position k / s")
    right.set_title("k within the rollout", fontsize=9)
    right.legend(fontsize=7)
    return save_figure(fig, path)


def plot_probes(probes: Mapping[int, Mapping[int, float]], path: str | Path) -> Path:
    """ToyBench Total against training step, one line per probe NFE ({step: {nfe: total}}): where the any-step
    curve is heading while the run trains. Lines that cross mean the curve's order over NFE has changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(probes)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for nfe in sorted({n for row in probes.values() for n in row}):
        pts = [(s, probes[s][nfe]) for s in steps if nfe in probes[s]]
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=f"{nfe} NFE")
    ax.set_xlabel("training step")
    ax.set_ylabel("ToyBench Total (probe prompts)")
    ax.set_title("any-step probe during training", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
