"""Sample an exported student at any NFE: video files, or a folder of GIFs + a contact sheet + the raw frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyflow.export import load_student
from anyflow.media import contact_sheet, save_gif

VIDEO_SUFFIXES = (".mp4", ".gif")


def sample_videos(folder: str | Path, prompts: list[str], nfes: list[int], seed: int, out: str | Path,
                  fps: int = 8) -> list[Path]:
    """One video file per (prompt, NFE): `out` itself when there is one of each, else `<stem>_nfe<N>_<i><suffix>`.
    mp4 goes through diffusers' `export_to_video` (imageio-ffmpeg); files are written to a temporary name first."""
    from diffusers.utils import export_to_video

    out = Path(out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {out}: a video file must end in {' or '.join(VIDEO_SUFFIXES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    student = load_student(folder)
    single = len(prompts) == 1 and len(nfes) == 1
    written = []
    for nfe in nfes:
        frames = student.generate(prompts, nfe=nfe, seed=seed)
        for i, video in enumerate(frames):
            path = out if single else out.with_name(f"{out.stem}_nfe{nfe}_{i}{out.suffix}")
            tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
            if path.suffix.lower() == ".gif":
                save_gif(video, tmp, fps=fps, scale=1)
            else:
                export_to_video(list(video), str(tmp), fps=fps)
            tmp.replace(path)
            written.append(path)
    return written


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
