"""The prebuilt toy teacher shipped in the repository (DESIGN §4), so `make run` starts at synthesis as a real
user starts from downloaded Wan2.1 weights.

The asset is a built teacher stage directory (a WanPipeline folder) plus `ASSET.json`: the stage key it was
built under (toy config + teacher code version), the command, git commit and machine that built it, the
build summary, and a sha256 per file. The teacher stage installs it only when its key equals the key the
current config and code would build; otherwise (another config, edited teacher code, `teacher.prebuilt=false`)
the teacher is trained as usual. `python -m flows teacher-asset` rebuilds it through the pipeline's own
teacher stage.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from anyflow.shards import sha256_file
from tasks.artifacts import MANIFEST, read_manifest, write_json_atomic

ASSET_FILE = "ASSET.json"
TOY_TEACHER_ASSET = Path(__file__).resolve().parents[1] / "assets" / "toy-teacher"


def _payload(folder: Path) -> list[Path]:
    """The files of a teacher folder that make up the asset (everything but the stage and asset records)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, ASSET_FILE)
                  and not p.name.startswith("."))


def _git_commit() -> tuple[str, bool]:
    """(HEAD commit, working tree dirty) of the repository holding this code, or ("unknown", False)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def _command() -> str:
    """This process's command line, `python -m flows ...` when run as the flows module."""
    prog = "python -m flows" if Path(sys.argv[0]).as_posix().endswith("flows/__main__.py") else Path(sys.argv[0]).name
    return " ".join([prog, *sys.argv[1:]])


def read_asset(asset: Path) -> dict[str, Any] | None:
    """The asset record, or None when there is no asset there."""
    try:
        return json.loads((Path(asset) / ASSET_FILE).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ValueError(f"{Path(asset) / ASSET_FILE}: not valid JSON ({err})") from None


def pack_asset(teacher_dir: Path, asset: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Copy a complete teacher stage directory to `asset` with its ASSET.json. The copy is made beside it and
    swapped in by renames; a previous asset is removed only once the new one is in place."""
    teacher_dir, asset = Path(teacher_dir), Path(asset)
    manifest = read_manifest(teacher_dir)
    if manifest is None:
        raise FileNotFoundError(f"{teacher_dir}: not a complete teacher stage directory (no {MANIFEST})")
    commit, dirty = _git_commit()
    work = asset.with_name(f".{asset.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    files = {}
    for path in _payload(teacher_dir):
        rel = path.relative_to(teacher_dir)
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, work / rel)
        files[rel.as_posix()] = sha256_file(path)
    record = {"key": manifest["key"], "code_version": manifest["code_version"], "config": config,
              "summary": {k: v for k, v in manifest["summary"].items() if k != "mlflow_run_id"},
              "built_by": {"command": _command(), "git_commit": commit,
                           "git_dirty": dirty, "packed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "machine": f"{platform.machine()} {platform.system()}"},
              "files": files}
    write_json_atomic(work / ASSET_FILE, record)
    old = asset.with_name(f".{asset.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if asset.exists():
        asset.rename(old)
    work.rename(asset)
    shutil.rmtree(old, ignore_errors=True)
    return record


def install_asset(asset: Path, record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Copy the asset's files into `out` (a stage work directory), checking each against its sha256; return
    the stage summary. A missing or altered file raises an error naming it (the work directory is discarded
    by the caller, so nothing half-copied is ever trusted)."""
    asset = Path(asset)
    for rel, digest in record["files"].items():
        src = asset / rel
        if not src.is_file():
            raise FileNotFoundError(f"prebuilt teacher {asset}: {rel} is missing (listed in {ASSET_FILE})")
        if sha256_file(src) != digest:
            raise ValueError(f"prebuilt teacher {asset}: {rel} does not match its sha256 in {ASSET_FILE} "
                             f"(altered, or a Git LFS pointer); rebuild with `python -m flows teacher-asset`")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out / rel)
    shutil.copy2(asset / ASSET_FILE, out / ASSET_FILE)
    built = record["summary"]
    return {"source": "prebuilt", "prebuilt_from": str(asset), "final_loss": built.get("final_loss"),
            "num_steps": built.get("num_steps"), "build_seconds": built.get("seconds"),
            "built_by_commit": record["built_by"].get("git_commit")}
