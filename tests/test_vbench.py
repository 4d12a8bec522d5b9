"""VBench: the official aggregation constants, the clipped (AnyFlow) variant, and the pre-flight check
that lists every missing piece before anything runs."""

import json

import pytest

from anyflow.vbench import DIMENSIONS, REQUIRED_FILES, VBenchSpec, VBenchUnavailable, aggregate, check_ready, \
    missing_requirements, read_results


def test_extremes_aggregate_to_0_and_1():
    top = aggregate({d: hi for d, (lo, hi, _, _) in DIMENSIONS.items()})
    bottom = aggregate({d: lo for d, (lo, hi, _, _) in DIMENSIONS.items()})
    assert top["quality"] == pytest.approx(1) and top["semantic"] == pytest.approx(1) and top["total"] == pytest.approx(1)
    assert bottom["total"] == pytest.approx(0)


def test_dynamic_degree_weighs_half_and_total_is_4_to_1():
    raw = {d: hi for d, (lo, hi, _, _) in DIMENSIONS.items()}
    no_dyn = aggregate({**raw, "dynamic_degree": 0.0})
    assert no_dyn["quality"] == pytest.approx(6 / 6.5)
    assert no_dyn["total"] == pytest.approx((4 * 6 / 6.5 + 1) / 5)


def test_clipped_variant_differs_only_out_of_range():
    raw = {d: (lo + hi) / 2 for d, (lo, hi, _, _) in DIMENSIONS.items()}
    assert aggregate(raw) == aggregate(raw, clip=True)
    raw["motion_smoothness"] = 0.999                        # above Max 0.9975: plausible for distilled models
    assert aggregate(raw)["total"] > aggregate(raw, clip=True)["total"]
    assert "total" not in aggregate({"subject_consistency": 0.9})   # partial sets give no Total


def test_preflight_lists_everything_missing(tmp_path):
    spec = VBenchSpec(python=str(tmp_path / "no-python"), cache_dir=str(tmp_path),
                      dimensions=("subject_consistency", "dynamic_degree", "temporal_flickering"))
    missing = missing_requirements(spec)
    assert any("python" in m for m in missing)
    assert any("raft-things.pth" in m for m in missing) and any("dino_vitbase16_pretrain.pth" in m for m in missing)
    with pytest.raises(VBenchUnavailable, match="raft-things.pth"):
        check_ready(spec)
    (tmp_path / "no-python").write_text("")
    for d in spec.dimensions:
        for rel in REQUIRED_FILES[d]:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("w")
    assert missing_requirements(spec) == []


def test_spec_validation_and_results_parsing(tmp_path):
    with pytest.raises(ValueError, match="unknown VBench dimensions"):
        VBenchSpec(dimensions=("sharpness",))
    with pytest.raises(ValueError, match="variant"):
        VBenchSpec(variant="vbench-3")
    (tmp_path / "x_eval_results.json").write_text(json.dumps({"dynamic_degree": [0.5, [{"video": 1}]]}))
    assert read_results(tmp_path / "x_eval_results.json") == {"dynamic_degree": 0.5}
