"""The command line: dry runs print the resolved config and plan; bad input exits 2 naming the field; the
final report points at the stage-2 probe."""

from flows.cli import main


def test_dry_run_prints_config_and_plan(capsys, tmp_path):
    assert main(["run", "--preset", "ci", "--set", f"paths.root={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: ci" in out and "stage plan:" in out and "teacher" in out and "to run" in out


def test_bad_override_exits_2_naming_the_field(capsys):
    assert main(["run", "--preset", "ci", "--set", "stage1.lr=fast", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stage1.lr" in err and "fast" in err


def test_report_points_at_the_stage2_probe(capsys):
    from flows.cli import _report

    stages = {"stage2": {"status": "built", "path": "/r/stage2/k", "probe": {"4": 0.79, "32": 0.786}}}
    _report({"stages": stages, "exported_model": "/r/m", "tracking_uri": "sqlite:///x", "experiment": "e",
             "parent_run_id": "p"})
    out = capsys.readouterr().out
    assert "stage-2 probe at its last step: 4 NFE 0.790, 32 NFE 0.786; training curve /r/stage2/k/probes.png" in out
    _report({"stages": {"stage2": {"status": "built", "path": "/r/stage2/k"}}, "exported_model": "/r/m",
             "tracking_uri": "sqlite:///x", "experiment": "e", "parent_run_id": "p"})
    assert "probe" not in capsys.readouterr().out
