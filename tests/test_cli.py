"""The command line: dry runs print the resolved config and plan; bad input exits 2 naming the field; the
final report points at the stage-2 probe and gives each sampler's column and 4 -> last NFE change."""

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


def test_report_gives_each_samplers_column_and_span(capsys, tmp_path):
    from flows.cli import _report

    rows = [{"model": m, "nfe": n, "total": t} for m, n, t in (
        ("student", 4, 0.781), ("student", 8, 0.808), ("consistency", 4, 0.772), ("consistency", 8, 0.751),
        ("teacher_euler", 8, 0.821))]
    rows.append({"model": "reference", "nfe": 100, "steps": 50, "total": 0.767, "total_ci_lo": 0.762,
                 "total_ci_hi": 0.773})
    (tmp_path / "table.json").write_text(__import__("json").dumps(rows))
    span = lambda d, lo, hi: {"from": 4, "to": 8, "delta": d, "ci_lo": lo, "ci_hi": hi, "ok": hi >= 0}
    ev = {"table": str(tmp_path / "table.parquet"), "plot": "p.png", "anystep_ok": False, "grid_shift": 3.0,
          "anystep_span": span(0.027, 0.02, 0.03), "baseline_spans": {"consistency": span(-0.021, -0.03, -0.01)}}
    _report({"stages": {}, "exported_model": "/r/m", "tracking_uri": "sqlite:///x", "experiment": "e",
             "parent_run_id": "p", "evaluation": ev})
    out = capsys.readouterr().out
    assert "NFE   student   student, consistency sampling   teacher Euler+CFG" in out
    assert "    4     0.781                           0.772                   -" in out
    assert "    8     0.808                           0.751               0.821" in out
    assert "student, 4 -> 8 NFE: Total +0.027 [+0.020, +0.030] (paired 95% CI; does not fall)" in out
    assert "student, consistency sampling, 4 -> 8 NFE: Total -0.021 [-0.030, -0.010] (paired 95% CI; FALLS)" in out
