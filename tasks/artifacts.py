"""Content-addressed stage directories (DESIGN §5): <artifacts>/<stage>/<key>/ with a manifest written last.

key = sha256(stage config, upstream keys, version of the anyflow code the stage depends on). A directory without its manifest is
incomplete and never trusted; builds happen in a `.<key>.partial` sibling that is renamed into place, and a
resumable stage picks up what a killed attempt left there.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyflow
from anyflow.checkpoint import atomic_path
from conf import config_hash

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageHandle:
    """What a stage returns: where its artifact is, its cache key, and a small summary."""

    stage: str
    key: str
    path: str
    summary: dict[str, Any]


# The anyflow modules each stage's result depends on (their anyflow imports are followed transitively), so
# editing, say, the evaluation code does not invalidate a trained teacher. Unknown stages hash everything.
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "teacher": ("toybuild", "wan"),
    "synthesis": ("synthesis", "prompts", "wan"),
    "teacher_tune": ("teacher_tune",),
    "stage1": ("stage1",),
    "stage2": ("stage2",),
    "export": ("export", "lora", "media", "student"),
    "evaluate": ("evaluation", "toybench", "vbench", "export"),
    "downstream_data": ("downstream",),
    "finetune": ("downstream",),
    "finetune_eval": ("downstream", "toybench", "export"),
}


def _anyflow_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "anyflow":
            parts = node.module.split(".")
            if len(parts) > 1:
                names.add(parts[1])
            else:
                names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("anyflow."))
    return names


def code_version(stage: str | None = None) -> str:
    """sha256 over the anyflow sources a stage depends on (all of anyflow if `stage` is None or unknown)."""
    root = Path(anyflow.__file__).parent
    files = {p.stem: p for p in root.glob("*.py")}
    if stage in STAGE_MODULES:
        todo, seen = list(STAGE_MODULES[stage]) + ["__init__"], set()
        while todo:
            name = todo.pop()
            if name in seen or name not in files:
                continue
            seen.add(name)
            todo.extend(_anyflow_imports(files[name]))
        paths = sorted(files[n] for n in seen)
    else:
        paths = sorted(root.rglob("*.py"))
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of a folder's files: a changed external teacher changes every key after it."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def stage_key(stage: str, config: Any, upstream: tuple[str, ...] = ()) -> str:
    """Cache key of a stage: its config, its upstream keys and the anyflow code version."""
    payload = {"stage": stage, "config": config, "upstream": list(upstream), "code": code_version(stage)}
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


@contextmanager
def _exclusive(lock_path: Path):
    """One builder per (stage, key) across processes: a second one waits, then finds the result."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def partial_dir(root: Path, stage: str, key: str) -> Path:
    """Where an unfinished build of (stage, key) keeps its work (in-stage checkpoints, finished shards)."""
    return stage_dir(root, stage, key).with_name(f".{key}.partial")


def build_stage(root: Path, stage: str, key: str, build: Callable[[Path], dict[str, Any]],
                resumable: bool = False) -> StageHandle:
    """Return the cached artifact for (stage, key) if complete; else run `build(work_dir) -> summary`, write
    the manifest last and rename the work directory into place atomically.

    The work directory is `.<key>.partial`. A resumable build finds there whatever a killed attempt left
    (and must verify it); a non-resumable build always starts from an empty one."""
    final = stage_dir(root, stage, key)
    with _exclusive(final.with_name(f".{key}.lock")):
        manifest = read_manifest(final)
        if manifest is not None:
            return StageHandle(stage, key, str(final), {**manifest["summary"], "cache_hit": True})
        if final.exists():  # incomplete: a deleted manifest or a foreign write; never trusted
            shutil.rmtree(final)
        work = partial_dir(root, stage, key)
        if not resumable:
            shutil.rmtree(work, ignore_errors=True)
        resumed = work.exists() and any(work.iterdir())
        work.mkdir(parents=True, exist_ok=True)
        start = time.time()
        try:
            summary = build(work)
        except BaseException:
            if not resumable:
                shutil.rmtree(work, ignore_errors=True)
            raise
        summary = {**summary, "seconds": round(time.time() - start, 1), "resumed": resumed}
        write_json_atomic(work / MANIFEST,
                          {"stage": stage, "key": key, "code_version": code_version(stage), "summary": summary})
        os.replace(work, final)
    return StageHandle(stage, key, str(final), {**summary, "cache_hit": False})


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON written to a temporary sibling and renamed into place (anyflow.checkpoint.atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))
