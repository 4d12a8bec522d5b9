"""Stage 1 under torchrun with 2 CPU processes (gloo): same global batch as 1 process, synchronised
weights, the same loss statistics, and exact resume from a 2-process checkpoint."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

import conf
from anyflow.shards import ShardWriter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp") / "data"
    w = ShardWriter(out, 8)
    for lo in range(0, 32, 8):
        w.write_shard([{"key": f"{i:08d}",
                        "latents": np.random.default_rng(i).standard_normal((2, 16, 4, 4)).astype(np.float32),
                        "prompt_embeds": np.random.default_rng(100 + i).standard_normal((4, 32)).astype(np.float32),
                        "prompt": f"p{i}", "meta": {}} for i in range(lo, lo + 8)])
    w.write_manifest({"max_sequence_length": 512})
    return out


def _handle(stage, path):
    """The StageHandle an upstream stage would pass (only its path is read)."""
    from tasks.artifacts import StageHandle

    return StageHandle(stage=stage, key=stage, path=str(path), summary={})


def test_two_processes_match_one(random_wan_folder, data, tmp_path):
    from anyflow.stage1 import train_stage1
    from anyflow.wan import load_teacher
    from tasks.stage1 import _launch, loss_spec, stage1_loop

    steps = ["stage1.num_steps=16", "stage1.checkpoint_every=8", "stage1.lora.rank=4", "stage1.lora.alpha=4"]
    two = conf.load("ci", [*steps, "stage1.batch_size=4", "stage1.num_processes=2"])
    one = conf.load("ci", [*steps, "stage1.batch_size=8"])
    logged = []
    ctx = SimpleNamespace(log=lambda m, s: logged.append((s, m)))
    teacher, shards = _handle("teacher", random_wan_folder), _handle("synthesis", data)
    summary2 = _launch(two, teacher, shards, tmp_path / "two", ctx)
    assert summary2["num_processes"] == 2 and len(set(summary2["weight_checksums"])) == 1   # in sync
    assert [s for s, _ in logged] == list(range(16)) and (tmp_path / "two" / "lora.safetensors").is_file()

    _, summary1 = train_stage1(load_teacher(random_wan_folder), data, tmp_path / "one", lora=one.stage1.lora,
                               loss=loss_spec(one), loop=stage1_loop(one), batch_size=8,
                               gate_value=one.stage1.gate_value, progress=False)
    l1, l2 = np.array(summary1["losses"]), np.array(summary2["losses"])
    assert summary1["num_processes"] == 1 and len(l1) == len(l2) == 16
    se = np.sqrt(l1.var() / len(l1) + l2.var() / len(l2))
    assert abs(l1.mean() - l2.mean()) < 3 * se + 0.05 * l1.mean()          # same loss statistics
    json.dumps(summary2)

    # Interrupted after 8 steps, then resumed: every process gets its own RNG states back, and the last 8 losses
    # are the uninterrupted run's.
    half = conf.load("ci", [*steps[1:], "stage1.num_steps=8", "stage1.batch_size=4", "stage1.num_processes=2"])
    _launch(half, teacher, shards, tmp_path / "resumed", ctx)
    ckpt = tmp_path / "resumed" / "checkpoints" / "step-0000008"
    assert {f"random_states_{r}.pkl" for r in (0, 1)} | {f"generator-{r}.safetensors" for r in (0, 1)} \
        <= {f.name for f in ckpt.iterdir()}
    assert not list((tmp_path / "resumed" / "checkpoints").glob(".*.tmp"))
    resumed = _launch(two, teacher, shards, tmp_path / "resumed", ctx)
    assert resumed["resumed_from"] == 8
    np.testing.assert_allclose(resumed["losses"], summary2["losses"][8:], rtol=1e-6)


def test_failing_worker_names_its_error(random_wan_folder, tmp_path):
    """The launcher's root-cause summary (the end of stderr, which the task's error keeps) carries the failing
    rank's own exception, here the missing shard folder, not only a pointer to the elastic-errors docs."""
    from tasks.stage1 import _launch

    cfg = conf.load("ci", ["stage1.num_steps=2", "stage1.batch_size=2", "stage1.num_processes=2"])
    missing = tmp_path / "no-shards"
    with pytest.raises(RuntimeError, match="multi-process stage 1 failed") as err:
        _launch(cfg, _handle("teacher", random_wan_folder), _handle("synthesis", missing), tmp_path / "out",
                SimpleNamespace(log=lambda m, s: None))
    root_cause = str(err.value).split("Root Cause")[-1]
    assert "ShardError" in root_cause and str(missing) in root_cause
