"""Typed config: presets build, overrides are typed, bad input fails naming the field, YAML/JSON round-trip."""

import json

import pytest

import conf
from conf.schema import PipelineConfig


@pytest.mark.parametrize("preset", conf.available_presets())
def test_every_preset_builds_and_round_trips(preset):
    cfg = conf.load(preset)
    assert conf.from_yaml(conf.to_yaml(cfg)) == cfg
    assert PipelineConfig.model_validate(json.loads(cfg.model_dump_json())) == cfg


def test_required_presets_exist():
    assert {"toy", "ci", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"} <= set(conf.available_presets())


def test_overrides_are_typed():
    cfg = conf.load("toy", ["stage1.lr=1e-4", "evaluation.nfe_list=[1,4,16]", "teacher.toy.train.num_steps=7",
                            "teacher.toy.world.speed=1"])
    assert cfg.stage1.lr == 1e-4 and isinstance(cfg.stage1.lr, float)
    assert cfg.evaluation.nfe_list == (1, 4, 16)
    assert cfg.teacher.toy.train.num_steps == 7
    assert cfg.teacher.toy.world.speed == 1.0


def test_ci_is_a_shrunk_toy():
    toy, ci = conf.load("toy"), conf.load("ci")
    assert ci.teacher.toy.world == toy.teacher.toy.world  # same world: the parser and metrics apply unchanged
    assert ci.teacher.toy.train.num_steps < toy.teacher.toy.train.num_steps
    assert ci.synthesis.num_samples < toy.synthesis.num_samples


@pytest.mark.parametrize("override, field, value", [
    ("stage1.lrr=1", "stage1.lrr", "1"),
    ("stage1.lr=abc", "stage1.lr", "abc"),
    ("teacher.toy.arch.bogus=3", "teacher.toy.arch.bogus", "3"),
    ("teacher.toy.train.shift=-1", "shift", "-1"),
    ("evaluation.nfe_list=[4,2]", "evaluation.nfe_list", "[4, 2]"),
    ("stage1.diffusion_ratio=0.9", "stage1.diffusion_ratio", "0.9"),
    ("teacher.source=path", "teacher.path", "teacher.path"),
    ("synthesis.guidance_scale=0.5", "synthesis.guidance_scale", "0.5"),
    ("stage2.probe_nfes=[16,4]", "stage2.probe_nfes", "[16, 4]"),
])
def test_bad_values_name_field_and_value(override, field, value):
    with pytest.raises(conf.ConfigError) as err:
        conf.load("toy", [override])
    assert field in str(err.value) and value in str(err.value)


def test_bad_override_syntax_and_preset():
    with pytest.raises(conf.ConfigError, match="dotted.key=value"):
        conf.load("toy", ["stage1.lr"])
    with pytest.raises(conf.ConfigError, match="unknown preset 'nope'"):
        conf.load("nope")
    with pytest.raises(conf.ConfigError, match="stage1.lr"):
        conf.load("toy", ["stage1.lr.x=1"])
    with pytest.raises(conf.ConfigError, match="teacher.source is a value"):
        conf.load("toy", ["teacher.source.x=1"])


def test_preset_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nstage1: {lr: 3.0e-4}\n")
    assert conf.load(str(path)).stage1.lr == 3e-4


def test_config_hash_tracks_values():
    a, b = conf.load("toy"), conf.load("toy", ["stage1.lr=2e-4"])
    assert conf.config_hash(a.teacher) == conf.config_hash(b.teacher)
    assert conf.config_hash(a.stage1) != conf.config_hash(b.stage1)


def test_partial_nested_sections_keep_their_own_defaults():
    import conf
    from anyflow.lora import TIME_EMBEDDERS

    cfg = conf.load("wan2.1-t2v-1.3b")
    assert cfg.stage1.lora.rank == 256 and set(TIME_EMBEDDERS) <= set(cfg.stage1.lora.targets)
    assert not set(TIME_EMBEDDERS) & set(cfg.stage2.critic_lora.targets)
    cfg = conf.load("toy", ["stage1.lora.rank=8", "teacher.toy.train.num_steps=7"])
    assert cfg.stage1.lora.rank == 8 and set(TIME_EMBEDDERS) <= set(cfg.stage1.lora.targets)
    assert cfg.teacher.toy.train.num_steps == 7 and cfg.teacher.toy.train.batch_size == 16


def test_finetune_domain_is_a_toy_domain_or_a_folder_with_a_bench(tmp_path):
    assert conf.load("toy").finetune.bench_domain == conf.load("toy").finetune.domain
    with pytest.raises(ValueError, match="finetune.domain='downstream'.*purple"):
        conf.load("toy", ["finetune.domain=downstream"])
    with pytest.raises(ValueError, match="set finetune.bench"):
        conf.load("toy", [f"finetune.domain={tmp_path}"])
    cfg = conf.load("toy", [f"finetune.domain={tmp_path}", "finetune.bench=bouncing"])
    assert cfg.finetune.bench_domain == "bouncing" and not cfg.finetune.renders_toy_domain


def test_evaluation_grid_shift_defaults_to_the_training_shift():
    from tasks.evaluate import evaluate_params, sweep_spec
    from tasks.artifacts import config_hash

    base, explicit, other = (conf.load("ci", o) for o in ([], ["evaluation.shift=3"], ["evaluation.shift=5"]))
    assert base.stage1.shift == 3 and sweep_spec(base).shift == 3 and sweep_spec(other).shift == 5
    assert other.stage1.shift == 3                                   # training is untouched
    # the same grid is the same computation, so the same cache key; another grid is another key
    assert config_hash(evaluate_params(base)) == config_hash(evaluate_params(explicit))
    assert config_hash(evaluate_params(base)) != config_hash(evaluate_params(other))
    with pytest.raises(ValueError, match="evaluation.shift"):
        conf.load("ci", ["evaluation.shift=0"])


def test_training_probe_needs_toybench():
    assert conf.load("toy", ["stage2.probe_every=100"]).stage2.probe_every == 100
    with pytest.raises(conf.ConfigError, match="stage2.probe_every=100.*'vbench'"):
        conf.load("toy", ["stage2.probe_every=100", "evaluation.backend=vbench",
                          "evaluation.consistency_baseline=false"])


def test_consistency_baseline_needs_toybench():
    assert conf.load("toy").evaluation.consistency_baseline
    assert not conf.load("wan2.1-t2v-1.3b").evaluation.consistency_baseline      # off by default: VBench runs
    with pytest.raises(conf.ConfigError, match="evaluation.consistency_baseline=true.*'vbench'"):
        conf.load("toy", ["stage2.probe_every=0", "evaluation.backend=vbench"])


def test_probe_settings_do_not_key_stage2():
    from tasks.artifacts import StageHandle
    from tasks.stage2 import stage2_key

    h = StageHandle(stage="x", key="k", path="/p", summary={})
    keys = {stage2_key(conf.load("ci", o), h, h, h) for o in
            ([], ["stage2.probe_every=0"], ["stage2.probe_every=7", "stage2.probe_nfes=[2,8]", "stage2.probe_prompts=9"])}
    assert len(keys) == 1
    assert stage2_key(conf.load("ci", ["stage2.num_steps=5"]), h, h, h) not in keys
