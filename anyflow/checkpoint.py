"""Atomic, pickle-free weight files: safetensors written to a temporary sibling, then renamed into place.

A crash mid-write leaves the previous file (or nothing), never a truncated one; loading never unpickles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping | None = None) -> Path:
    """Write `tensors` as safetensors atomically; `metadata` (JSON-able) is stored under the "anyflow" key."""
    meta = {"anyflow": json.dumps(metadata)} if metadata is not None else None
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return Path(path)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a safetensors file written by `save_tensors`: (tensors, metadata or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get("anyflow")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, (json.loads(meta) if meta is not None else None)
