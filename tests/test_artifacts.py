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


def test_code_version_follows_each_stage_own_modules():
    from tasks.artifacts import STAGE_MODULES, _anyflow_imports, code_version
    from pathlib import Path
    import anyflow

    root = Path(anyflow.__file__).parent
    assert "toyworld" in _anyflow_imports(root / "toybuild.py")          # followed transitively
    assert code_version("teacher") != code_version("evaluate") != code_version()
    assert set(STAGE_MODULES) >= {"teacher", "synthesis", "stage1", "export", "evaluate"}


def test_teacher_code_version_ignores_evaluation_code(tmp_path, monkeypatch):
    import anyflow
    from pathlib import Path
    import shutil

    from tasks import artifacts

    fake = tmp_path / "anyflow"
    shutil.copytree(Path(anyflow.__file__).parent, fake, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(anyflow, "__file__", str(fake / "__init__.py"))
    teacher, evaluate = artifacts.code_version("teacher"), artifacts.code_version("evaluate")
    (fake / "toybench.py").write_text((fake / "toybench.py").read_text() + "\n# edit\n")
    assert artifacts.code_version("teacher") == teacher and artifacts.code_version("evaluate") != evaluate
    (fake / "toyworld.py").write_text((fake / "toyworld.py").read_text() + "\n# edit\n")
    assert artifacts.code_version("teacher") != teacher
