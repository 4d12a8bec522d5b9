"""Writing videos for people to look at: animated GIFs and an NFE × prompt contact sheet (Pillow only).

Frames are float arrays [F, H, W, 3] in [0, 1]. Files are written atomically (temporary sibling, rename).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anyflow.checkpoint import atomic_path


def _to_uint8(frames: np.ndarray, scale: int) -> list[Image.Image]:
    arr = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    return [Image.fromarray(f) for f in arr]


def save_gif(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 4) -> Path:
    """An looping GIF of `frames` [F, H, W, 3], each pixel enlarged `scale`x (toy videos are tiny)."""
    images = _to_uint8(frames, scale)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


def contact_sheet(rows: Mapping[str, np.ndarray], path: str | Path, columns: Sequence[str] = (),
                  scale: int = 2, max_frames: int = 9) -> Path:
    """A PNG grid: one row per label (e.g. "4 NFE"), each row the frames of videos [N, F, H, W, 3] laid side
    by side (video after video), so quality across NFEs can be compared at a glance."""
    label_w, pad = 70, 4
    first = next(iter(rows.values()))
    n, f, h, w = first.shape[:4]
    f = min(f, max_frames)
    cell_w, cell_h = w * scale, h * scale
    width = label_w + n * (f * cell_w + pad)
    top = 14 if columns else 0
    sheet = Image.new("RGB", (width, top + len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(columns):
        draw.text((label_w + j * (f * cell_w + pad), 1), str(name)[: f * cell_w // 6], fill="black")
    for i, (label, videos) in enumerate(rows.items()):
        y = top + i * (cell_h + pad)
        draw.text((2, y + cell_h // 2 - 5), str(label), fill="black")
        for j, video in enumerate(videos[:n]):
            for k, img in enumerate(_to_uint8(video[:f], scale)):
                sheet.paste(img, (label_w + j * (f * cell_w + pad) + k * cell_w, y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write atomically as PNG and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
