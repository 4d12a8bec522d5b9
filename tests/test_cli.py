"""The command line: dry runs print the resolved config and plan; bad input exits 2 naming the field."""

from flows.cli import main


def test_dry_run_prints_config_and_plan(capsys, tmp_path):
    assert main(["run", "--preset", "ci", "--set", f"paths.root={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: ci" in out and "stage plan:" in out and "teacher" in out and "to run" in out


def test_bad_override_exits_2_naming_the_field(capsys):
    assert main(["run", "--preset", "ci", "--set", "stage1.lr=fast", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stage1.lr" in err and "fast" in err
