"""Content-addressed stage directories: complete only with a manifest, cached, atomic."""

import json

import pytest

from tasks.artifacts import MANIFEST, build_stage, read_manifest, stage_key


def writer(calls):
    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x")
        return {"n": len(calls)}
    return build


def test_second_call_is_a_cache_hit(tmp_path):
    calls = []
    a = build_stage(tmp_path, "teacher", "k1", writer(calls))
    b = build_stage(tmp_path, "teacher", "k1", writer(calls))
    assert len(calls) == 1 and a.path == b.path
    assert not a.summary["cache_hit"] and b.summary["cache_hit"] and b.summary["n"] == 1


def test_incomplete_directory_is_rebuilt(tmp_path):
    calls = []
    h = build_stage(tmp_path, "teacher", "k1", writer(calls))
    (tmp_path / "teacher" / "k1" / MANIFEST).unlink()          # e.g. killed before the manifest landed
    assert read_manifest(tmp_path / "teacher" / "k1") is None
    again = build_stage(tmp_path, "teacher", "k1", writer(calls))
    assert len(calls) == 2 and not again.summary["cache_hit"] and again.path == h.path


def test_failed_build_leaves_no_final_directory_and_keeps_others(tmp_path):
    build_stage(tmp_path, "teacher", "good", writer([]))

    def broken(out):
        (out / "partial").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_stage(tmp_path, "teacher", "bad", broken)
    assert not (tmp_path / "teacher" / "bad").exists()
    assert json.loads((tmp_path / "teacher" / "good" / MANIFEST).read_text())["summary"]["n"] == 1


def test_key_depends_on_config_and_upstream():
    base = stage_key("stage1", {"lr": 1e-4}, ("a",))
    assert base == stage_key("stage1", {"lr": 1e-4}, ("a",))
    assert base != stage_key("stage1", {"lr": 2e-4}, ("a",))
    assert base != stage_key("stage1", {"lr": 1e-4}, ("b",))
    assert base != stage_key("stage2", {"lr": 1e-4}, ("a",))
