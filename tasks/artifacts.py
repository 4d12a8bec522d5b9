"""Content-addressed stage directories (DESIGN §5): <artifacts>/<stage>/<key>/ with a manifest written last.

key = sha256(stage config, upstream keys, anyflow code version). A directory without its manifest is
incomplete and never trusted; builds happen in a temporary sibling that is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyflow
from conf import config_hash

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageHandle:
    """What a stage returns: where its artifact is, its cache key, and a small summary."""

    stage: str
    key: str
    path: str
    summary: dict[str, Any]


def code_version() -> str:
    """sha256 over the anyflow package's source files: any library change invalidates cached stages."""
    h = hashlib.sha256()
    root = Path(anyflow.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, config: Any, upstream: tuple[str, ...] = ()) -> str:
    """Cache key of a stage: its config, its upstream keys and the anyflow code version."""
    payload = {"stage": stage, "config": config, "upstream": list(upstream), "code": code_version()}
    return config_hash(payload)[:16]


def stage_dir(root: Path, stage: str, key: str) -> Path:
    """Where the artifact of (stage, key) lives: <root>/<stage>/<key>/."""
    return Path(root) / stage / key


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a complete stage directory, or None if the directory is missing or incomplete."""
    try:
        return json.loads((path / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_stage(root: Path, stage: str, key: str, build: Callable[[Path], dict[str, Any]]) -> StageHandle:
    """Return the cached artifact for (stage, key) if complete, else run `build(tmp_dir) -> summary`
    in a temporary directory, write the manifest last, and rename it into place atomically."""
    final = stage_dir(root, stage, key)
    manifest = read_manifest(final)
    if manifest is not None:
        return StageHandle(stage, key, str(final), {**manifest["summary"], "cache_hit": True})
    if final.exists():  # incomplete: a killed build or a deleted manifest; never trusted
        shutil.rmtree(final)
    tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.time()
    summary = build(tmp)
    summary = {**summary, "seconds": round(time.time() - start, 1)}
    write_json_atomic(tmp / MANIFEST, {"stage": stage, "key": key, "code_version": code_version(), "summary": summary})
    os.replace(tmp, final)
    return StageHandle(stage, key, str(final), {**summary, "cache_hit": False})


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
