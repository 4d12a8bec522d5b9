"""Sample an exported student at several NFEs: GIFs per prompt and NFE, a contact sheet, the raw frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyflow.export import load_student
from anyflow.media import contact_sheet, save_gif


def sample_student(folder: str | Path, prompts: list[str], nfes: list[int], seed: int, out_dir: str | Path) -> Path:
    """Write `<out_dir>/nfe<N>_<i>.gif`, `frames_nfe<N>.npy` and `sheet.png`; return the sheet's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student = load_student(folder)
    rows = {}
    for nfe in nfes:
        frames = student.generate(prompts, nfe=nfe, seed=seed)
        np.save(out_dir / f"frames_nfe{nfe}.npy", frames)
        for i, video in enumerate(frames):
            save_gif(video, out_dir / f"nfe{nfe}_{i}.gif")
        rows[f"{nfe} NFE"] = frames
    return contact_sheet(rows, out_dir / "sheet.png", columns=prompts)
