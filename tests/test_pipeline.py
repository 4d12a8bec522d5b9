"""End to end through Prefect on the ci preset: stages run, then all hit the cache; a changed config
re-runs exactly the affected stages; a deleted artifact is rebuilt; an interrupted synthesis resumes to
the same shards; MLflow holds the parent/child structure with params, metrics and artifacts."""

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def run(root, *overrides, **kw):
    from flows.pipeline import pipeline

    return pipeline(preset="ci", overrides=[f"paths.root={root}", *overrides], **kw)


STAGES = ("teacher", "synthesis", "stage1", "stage2", "export", "evaluate", "downstream_data", "finetune",
          "finetune_eval")


def states(summary):
    return {stage: info["prefect_state"] for stage, info in summary["stages"].items()}


@pytest.fixture(scope="module")
def twice(prefect_harness, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    first = run(root)
    second = run(root, summary_json=str(root / "summary.json"))
    return root, first, second


def children(summary):
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([client.get_run(summary["parent_run_id"]).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    return client, {r.data.tags["stage"]: r for r in runs}


def test_first_run_builds_every_stage(twice):
    _, first, _ = twice
    assert states(first) == {s: "Completed" for s in STAGES}
    assert not any(info["cache_hit"] for info in first["stages"].values())
    assert Path(first["exported_model"], "model_index.json").is_file()
    assert Path(first["finetuned_model"], "model_index.json").is_file()
    from anyflow.shards import ShardReader
    replay = ShardReader(Path(first["stages"]["finetune"]["path"], "replay"))   # the distilled student's samples
    assert replay.num_samples == 8 and first["stages"]["finetune"]["replay_per_batch"] == 2
    assert first["stages"]["finetune"]["anchor_weight"] == 1.0       # the replayed rows train the anchor
    assert {"attn1.to_q", "attn2.to_k", "attn2.to_v"} <= set(first["stages"]["finetune"]["lora_targets"])
    ft = first["finetune"]
    assert ft["bench"] == "purple"
    assert 0 <= ft["downstream_before"] <= 1 and 0 <= ft["downstream_after"] <= 1 and ft["real_downstream_score"] > 0.9


def test_second_run_is_all_cache_hits(twice):
    root, first, second = twice
    assert set(states(second).values()) == {"Cached"} and set(states(second)) == set(STAGES)
    assert all(info["cache_hit"] for info in second["stages"].values())
    assert {s: i["path"] for s, i in first["stages"].items()} == {s: i["path"] for s, i in second["stages"].items()}
    assert (root / "summary.json").is_file()
    _, runs = children(second)
    assert set(runs) == set(STAGES)
    assert all(r.data.tags["cache_hit"] == "true" for r in runs.values())
    assert runs["synthesis"].data.tags["source_run_id"] == first["stages"]["synthesis"]["mlflow_run_id"]


def test_mlflow_parent_and_children(twice):
    _, first, _ = twice
    client, runs = children(first)
    parent = client.get_run(first["parent_run_id"])
    assert {"config_hash", "code_version", "prefect_flow_run_id"} <= set(parent.data.tags)
    assert parent.data.tags["prefect_flow_run_id"] == str(first["prefect_flow_run_id"])
    assert parent.data.params["synthesis.num_samples"] == "32"
    assert {"config.yaml", "summary.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert set(runs) == set(STAGES)
    assert all(r.data.tags["cache_hit"] == "false" for r in runs.values())
    s2 = runs["stage2"]
    assert {"stage2/dmd_loss", "stage2/flowmap_loss", "stage2/s", "stage2/k", "critic/loss"} <= set(s2.data.metrics)
    assert {int(m.value) for m in client.get_metric_history(s2.info.run_id, "stage2/s")} <= {2, 4}
    assert "budgets.png" in {a.path for a in client.list_artifacts(s2.info.run_id)}
    assert [a.path for a in client.list_artifacts(s2.info.run_id, "previews")] == [
        "previews/step_000002.png", "previews/step_000004.png"]
    assert sum(first["stages"]["stage2"]["budget_counts"].values()) == 4
    assert [m.step for m in client.get_metric_history(s2.info.run_id, "probe/total_nfe4")] == [2, 4]
    assert "probes.png" in {a.path for a in client.list_artifacts(s2.info.run_id)}
    assert set(first["stages"]["stage2"]["probe"]) == {"1", "4"}
    s1 = runs["stage1"]
    assert s1.data.params["fused_guidance_scale"] == "3.0" and s1.data.params["lora.rank"] == "32"
    assert len(client.get_metric_history(s1.info.run_id, "stage1/loss")) == 10
    assert {"stage1/loss_diffusion", "stage1/grad_norm", "stage1/lr", "stage1/samples_per_s",
            "stage1/ema_decay"} <= set(s1.data.metrics)
    syn = runs["synthesis"]
    assert syn.data.params["num_inference_steps"] == "4" and syn.data.metrics["synthesis/final/num_samples"] == 32
    assert len(client.get_metric_history(runs["teacher"].info.run_id, "teacher/loss")) >= 3
    assert "manifest.parquet" in {a.path for a in client.list_artifacts(syn.info.run_id)}
    assert "preview.png" in {a.path for a in client.list_artifacts(runs["export"].info.run_id)}
    ev = runs["evaluate"]
    assert {"score_vs_nfe.png", "table.parquet", "table.json", "anystep.json"} <= {
        a.path for a in client.list_artifacts(ev.info.run_id)}
    assert {"eval/total_nfe1", "eval/total_nfe4", "eval/teacher_euler/total_nfe4", "eval/anystep_ok",
            "eval/anystep_span_delta", "eval/anystep_spearman_span", "eval/step_convergence_nfe4",
            "eval/consistency/total_nfe4", "eval/consistency/anystep_span_delta",
            "eval/teacher_euler/anystep_span_delta"} <= set(ev.data.metrics)
    assert "eval/step_convergence_nfe8" not in ev.data.metrics          # no 16-NFE sweep to compare with
    assert ev.data.tags["anystep_ok"] in ("true", "false")
    assert sorted(m.step for m in client.get_metric_history(ev.info.run_id, "eval/total")) == [1, 2, 4, 8]
    fe = runs["finetune_eval"]
    assert {"downstream_vs_nfe.png", "downstream_samples.png", "comparison.json", "table.json"} <= {
        a.path for a in client.list_artifacts(fe.info.run_id)}
    assert {"finetune/downstream/before/score_nfe4", "finetune/downstream/after/score_nfe4",
            "finetune/base/before/total_nfe4", "finetune/base/after/total_nfe4"} <= set(fe.data.metrics)
    assert len(client.get_metric_history(runs["finetune"].info.run_id, "finetune/loss")) == 4
    assert len(client.get_metric_history(runs["finetune"].info.run_id, "finetune/anchor_loss")) == 4


def test_changed_config_reruns_only_the_affected_stage(twice):
    root, _, _ = twice
    third = run(root, "synthesis.seed=1")
    assert states(third) == {**{s: "Completed" for s in STAGES}, "teacher": "Cached", "downstream_data": "Cached"}


def test_teacher_tuning_feeds_stage2_and_reruns_only_what_follows(twice):
    root, first, _ = twice
    tuned = run(root, "teacher_tune.enabled=true", "teacher_tune.num_steps=3", "teacher_tune.batch_size=2")
    assert states(tuned) == {"teacher": "Cached", "synthesis": "Cached", "teacher_tune": "Completed",
                             "stage1": "Cached", "stage2": "Completed", "export": "Completed", "evaluate": "Completed",
                             "downstream_data": "Cached", "finetune": "Completed", "finetune_eval": "Completed"}
    tt = tuned["stages"]["teacher_tune"]
    assert tt["steps"] == 3 and Path(tt["path"], "lora.safetensors").is_file()
    assert tuned["stages"]["stage2"]["tuned_teacher"] == tt["key"] != None
    assert tuned["stages"]["stage2"]["key"] != first["stages"]["stage2"]["key"]
    client, runs = children(tuned)
    assert len(client.get_metric_history(runs["teacher_tune"].info.run_id, "teacher_tune/loss")) == 3


def test_deleted_artifact_is_rebuilt(twice):
    root, first, _ = twice
    shutil.rmtree(first["stages"]["export"]["path"])
    again = run(root)
    # the rebuilt export has the same content address, so its evaluation stays valid
    assert states(again) == {**{s: "Cached" for s in STAGES}, "export": "Completed"}
    assert Path(again["exported_model"], "model_index.json").is_file()


def test_rebuilt_training_stage_reproduces_its_weights_bit_for_bit(twice):
    root, first, _ = twice
    lora = Path(first["stages"]["stage1"]["path"], "lora.safetensors")
    before = lora.read_bytes()
    shutil.rmtree(first["stages"]["stage1"]["path"])
    again = run(root)
    assert states(again) == {**{s: "Cached" for s in STAGES}, "stage1": "Completed"}
    assert lora.read_bytes() == before        # seeded LoRA init, data order and noise: a re-run is the same run


def test_interrupted_synthesis_resumes_to_the_same_shards(twice, monkeypatch, tmp_path):
    import anyflow.shards
    from anyflow.prompts import load_prompts
    from anyflow.synthesis import synthesize
    from anyflow.wan import load_teacher, teacher_video_size

    root, first, _ = twice
    real_write = anyflow.shards.ShardWriter.write_shard
    calls = []

    def dies_after_one_shard(self, samples):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure: synthesis killed after its first shard")
        return real_write(self, samples)

    monkeypatch.setattr(anyflow.shards.ShardWriter, "write_shard", dies_after_one_shard)
    with pytest.raises(RuntimeError, match="injected failure"):
        run(root, "synthesis.seed=9")
    monkeypatch.setattr(anyflow.shards.ShardWriter, "write_shard", real_write)
    resumed = run(root, "synthesis.seed=9")
    syn = resumed["stages"]["synthesis"]
    assert syn["resumed"] and syn["resumed_from"] == 16 and syn["generated"] == 16

    teacher = first["stages"]["teacher"]["path"]
    clean = synthesize(load_teacher(teacher), load_prompts("toy", 32, 9), tmp_path, num_inference_steps=4,
                       guidance_scale=4.0, batch_size=16, samples_per_shard=16, seed=9,
                       video=teacher_video_size(teacher), progress=False)
    assert clean["num_samples"] == 32
    from anyflow.shards import ShardReader
    assert [s.sha256 for s in ShardReader(syn["path"]).shards] == [s.sha256 for s in ShardReader(tmp_path).shards]


def test_bad_inputs_fail_naming_the_culprit_and_keep_finished_stages(twice, tmp_path):
    root, first, _ = twice
    with pytest.raises(FileNotFoundError, match="teacher.path"):
        run(root, "teacher.source=path", f"teacher.path={tmp_path / 'no-such-wan'}")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt"):
        run(root, f"synthesis.prompts={tmp_path / 'empty.txt'}")
    assert Path(first["stages"]["teacher"]["path"], "manifest.json").is_file()


def test_evaluate_entry_scores_any_exported_folder(twice, tmp_path):
    import shutil as sh

    from flows.pipeline import evaluate_model

    root, first, _ = twice
    copy = tmp_path / "someone-elses-student"
    sh.copytree(first["exported_model"], copy)
    out = evaluate_model(model=str(copy), preset="ci", overrides=[f"paths.root={root}"])
    assert states(out) == {"teacher": "Cached", "evaluate": "Completed"}
    assert set(out["evaluation"]["student_total"]) == {1, 2, 4, 8} and Path(out["evaluation"]["plot"]).is_file()
    span = out["evaluation"]["anystep_span"]
    assert (span["from"], span["to"]) == (4, 8) and span["ci_lo"] <= span["delta"] <= span["ci_hi"]
    spans = out["evaluation"]["baseline_spans"]          # the ci preset also samples the student consistency-style
    assert set(spans) == {"consistency", "teacher_euler"}
    assert (spans["consistency"]["from"], spans["consistency"]["to"]) == (4, 8)
    again = evaluate_model(model=str(copy), preset="ci", overrides=[f"paths.root={root}"])
    assert states(again) == {"teacher": "Cached", "evaluate": "Cached"}


def test_deployment_has_the_cron_schedule(prefect_harness):
    from flows.deploy import deployment

    d = deployment("ci", ["stage1.lr=1e-4"], "0 3 * * *", "ci-nightly")
    assert d.name == "ci-nightly" and d.parameters == {"preset": "ci", "overrides": ["stage1.lr=1e-4"]}
    assert d.schedules[0].schedule.cron == "0 3 * * *"
