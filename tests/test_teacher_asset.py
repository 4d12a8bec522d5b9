"""The prebuilt toy teacher: the shipped asset matches the toy preset, and pack -> install round-trips."""

import json
from pathlib import Path

import pytest

import conf
from tasks.artifacts import read_manifest
from tasks.teacher import build_teacher, prebuilt_available, teacher_identity, teacher_key
from anyflow.shards import sha256_file
from tasks.teacher_asset import ASSET_FILE, TOY_TEACHER_ASSET, pack_asset, read_asset


def _in_root(cfg, root, **teacher):
    return cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"root": str(root)}),
                                  "teacher": cfg.teacher.model_copy(update=teacher)})


def test_shipped_teacher_matches_the_toy_preset_and_its_files():
    """Fails when the toy teacher's config or code changed without re-packing (make run would then train it)."""
    record = read_asset(TOY_TEACHER_ASSET)
    assert record is not None, f"no prebuilt teacher in {TOY_TEACHER_ASSET}"
    cfg = conf.load("toy")
    assert record["key"] == teacher_key(cfg), (
        "the shipped toy teacher was built for another config or teacher code: "
        "re-pack it with `python -m flows teacher-asset`")
    assert record["config"] == teacher_identity(cfg)
    for rel, digest in record["files"].items():
        assert sha256_file(TOY_TEACHER_ASSET / rel) == digest, rel
    assert prebuilt_available(cfg)
    assert not prebuilt_available(_in_root(cfg, "/nonexistent", prebuilt=False))


def test_pack_then_install_round_trips(ci_config, ci_teacher, tmp_path):
    asset = tmp_path / "asset"
    record = pack_asset(Path(ci_teacher.path), asset, ci_config.teacher.model_dump(mode="json"))
    assert record["key"] == ci_teacher.key and "transformer/diffusion_pytorch_model.safetensors" in record["files"]
    assert not (asset / "manifest.json").exists()      # the stage record is written by the installing stage

    cfg = _in_root(ci_config, tmp_path / "runs")
    handle = build_teacher(cfg, progress=False, asset=asset)
    assert handle.key == ci_teacher.key and not handle.summary["cache_hit"]
    assert handle.summary["source"] == "prebuilt" and handle.summary["num_steps"] == ci_teacher.summary["num_steps"]
    for rel in record["files"]:
        assert (Path(handle.path) / rel).read_bytes() == (Path(ci_teacher.path) / rel).read_bytes(), rel
    assert build_teacher(cfg, progress=False, asset=asset).summary["cache_hit"]


def test_an_altered_asset_file_is_refused_by_name(ci_config, ci_teacher, tmp_path):
    asset = tmp_path / "asset"
    pack_asset(Path(ci_teacher.path), asset, ci_config.teacher.model_dump(mode="json"))
    with open(asset / "vae" / "config.json", "a") as f:
        f.write(" ")
    cfg = _in_root(ci_config, tmp_path / "runs")
    with pytest.raises(ValueError, match="vae/config.json"):
        build_teacher(cfg, progress=False, asset=asset)
    folder = tmp_path / "runs" / "artifacts" / "teacher"
    assert read_manifest(folder / ci_teacher.key) is None and not list(folder.glob(".*.partial"))


def test_a_foreign_asset_is_not_installed(ci_config, ci_teacher, tmp_path):
    asset = tmp_path / "asset"
    pack_asset(Path(ci_teacher.path), asset, ci_config.teacher.model_dump(mode="json"))
    record = json.loads((asset / ASSET_FILE).read_text())
    (asset / ASSET_FILE).write_text(json.dumps({**record, "key": "0" * 16}))
    assert not prebuilt_available(ci_config, asset)
    handle = build_teacher(_in_root(ci_config, tmp_path / "runs"), progress=False, asset=asset)
    assert handle.summary["source"] == "toy" and not handle.summary["cache_hit"]   # trained, not installed


def test_dry_run_plans_the_prebuilt_teacher(capsys, tmp_path):
    from flows.cli import main

    assert main(["run", "--preset", "toy", "--set", f"paths.root={tmp_path}", "--dry-run"]) == 0
    plan = capsys.readouterr().out.split("stage plan:")[1]
    assert "teacher         prebuilt" in plan and "synthesis       to run" in plan
    assert main(["run", "--preset", "toy", "--set", f"paths.root={tmp_path}", "--set", "teacher.prebuilt=false",
                 "--dry-run"]) == 0
    assert "teacher         to run" in capsys.readouterr().out
