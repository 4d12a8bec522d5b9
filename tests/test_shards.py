"""Webdataset shards: round trip, resumable writing with no partial shards, seeded resumable reading,
and clear errors for missing, truncated, corrupt or tampered shards."""

import numpy as np
import pytest
import torch

from anyflow.shards import LEDGER, MANIFEST, ShardError, ShardReader, ShardWriter, open_shards


def samples(lo, hi, seq=3):
    return [{"key": f"{i:08d}", "latents": np.random.default_rng(i).standard_normal((5, 16, 4, 4)).astype(np.float32),
             "prompt_embeds": np.full((seq + i % 3, 8), i, np.float32), "prompt": f"prompt {i}",
             "meta": {"index": i}} for i in range(lo, hi)]


def write(out, n=20, per_shard=8, fail_at=None):
    w = ShardWriter(out, per_shard)
    for lo in range(w.num_written, n, per_shard):
        if fail_at is not None and lo >= fail_at:
            raise RuntimeError("killed")
        w.write_shard(samples(lo, min(lo + per_shard, n)))
    w.write_manifest({"max_sequence_length": 12})
    return w


def test_round_trip_and_padding(tmp_path):
    write(tmp_path)
    r = ShardReader(tmp_path)
    assert r.num_samples == 20 and len(r.shards) == 3 and r.shards[-1].num_samples == 4
    got = {}
    for s in r.epoch_order(seed=0, epoch=0):
        got[s["__key__"]] = s
    assert sorted(got) == [f"{i:08d}" for i in range(20)]
    b = next(r.batches(4, seed=0))
    assert b.latents.shape == (4, 16, 5, 4, 4) and b.prompt_embeds.shape == (4, 12, 8) and b.position == 4
    i = int(b.prompts[0].split()[1])
    n_real = 3 + i % 3
    assert torch.all(b.prompt_embeds[0, :n_real] == i) and torch.all(b.prompt_embeds[0, n_real:] == 0)
    assert torch.allclose(b.latents[0].permute(1, 0, 2, 3), torch.from_numpy(samples(i, i + 1)[0]["latents"]))


def test_seeded_order_and_exact_resume(tmp_path):
    write(tmp_path)
    r = ShardReader(tmp_path)
    order = lambda seed, epoch: [s["__key__"] for s in r.epoch_order(seed, epoch, buffer=5)]
    assert order(1, 0) == order(1, 0) and order(1, 0) != order(2, 0) and order(1, 0) != order(1, 1)
    full = r.batches(6, seed=1)
    first = [next(full) for _ in range(7)]                        # crosses two epoch boundaries
    resumed = r.batches(6, seed=1, start=first[2].position)
    for expected in first[3:]:
        got = next(resumed)
        assert got.prompts == expected.prompts and torch.equal(got.latents, expected.latents)


def test_interrupted_writing_resumes_identically(tmp_path):
    write(tmp_path / "clean")
    with pytest.raises(RuntimeError):
        write(tmp_path / "killed", fail_at=16)
    (tmp_path / "killed" / "shard-000002.tar.tmp").write_bytes(b"half a shard")   # died mid-write
    (tmp_path / "killed" / "shard-000002.tar").write_bytes(b"not in the ledger")
    w = write(tmp_path / "killed")
    assert len(w.shards) == 3 and not list((tmp_path / "killed").glob("*.tmp"))
    clean, resumed = ShardReader(tmp_path / "clean"), ShardReader(tmp_path / "killed")
    assert [s.sha256 for s in clean.shards] == [s.sha256 for s in resumed.shards]


def test_damaged_ledger_shard_is_redone(tmp_path):
    write(tmp_path, n=16)
    (tmp_path / "shard-000001.tar").write_bytes(b"garbage")
    w = ShardWriter(tmp_path, 8)
    assert w.num_written == 8 and "shard-000001" not in (tmp_path / LEDGER).read_text()


def test_missing_truncated_tampered_and_corrupt_shards_are_named(tmp_path):
    with pytest.raises(ShardError, match="no manifest.parquet"):
        ShardReader(tmp_path)
    write(tmp_path)
    shard = tmp_path / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:-700])
    with pytest.raises(ShardError, match=r"shard-000001.tar: size .* \(truncated\?\)"):
        ShardReader(tmp_path)
    shard.write_bytes(data[:600] + bytes(len(data) - 600))
    with pytest.raises(ShardError, match="shard-000001.tar: checksum mismatch"):
        ShardReader(tmp_path)
    reader = ShardReader(tmp_path, verify=False)
    with pytest.raises(ShardError, match="shard-000001.tar: corrupt shard"):
        list(reader.epoch_order(seed=0, epoch=0))
    shard.unlink()
    with pytest.raises(ShardError, match="shard-000001.tar: shard listed in the manifest is missing"):
        ShardReader(tmp_path)
    (tmp_path / MANIFEST).write_bytes(b"not parquet")
    with pytest.raises(ShardError, match="unreadable manifest"):
        ShardReader(tmp_path)


def test_open_shards_names_a_text_length_mismatch(tmp_path):
    write(tmp_path)
    assert open_shards(tmp_path, 12).num_samples == 20
    with pytest.raises(ShardError, match=f"{tmp_path}: shards padded to 12 tokens, the model uses 512"):
        open_shards(tmp_path, 512)
