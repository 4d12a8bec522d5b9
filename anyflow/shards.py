"""Webdataset shards of teacher samples, a parquet manifest, and a seeded, resumable reader (DESIGN §7).

One sample (key = zero-padded global index) holds
    latents.npy        normalised VAE latents, frame-major [F, C, H, W] (float16 or float32)
    prompt_embeds.npy  the prompt's real-token embedding rows [n, D] (the Wan zero padding is not stored;
                       the reader pads back to the manifest's `max_sequence_length`)
    prompt.txt         the prompt
    meta.json          index, seed, teacher settings, shapes

Writing is resumable at shard granularity: each shard is written to a temporary name, fsynced and renamed,
then recorded with its sha256 in `shards.jsonl`. On restart the ledger's shards are verified and kept, and
anything not in it (a shard being written when the process died) is deleted, so no partial or duplicate
shard survives. `manifest.parquet` (one row per shard, the run's settings as schema metadata) is written
last. Files are `.npy`, never pickles.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds

LEDGER = "shards.jsonl"
MANIFEST = "manifest.parquet"
SHARD_PATTERN = "shard-{:06d}.tar"


class ShardError(ValueError):
    """A shard or manifest that cannot be trusted; the message names the file."""


@dataclass(frozen=True)
class ShardInfo:
    shard: str
    num_samples: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str


def _all(urls):
    return urls


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Writes numbered shards into `out_dir`, resuming after the last shard recorded in the ledger."""

    def __init__(self, out_dir: str | Path, samples_per_shard: int):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.shards = self._recover()

    def _recover(self) -> list[ShardInfo]:
        ledger = self.out_dir / LEDGER
        shards = [ShardInfo(**json.loads(line)) for line in ledger.read_text().splitlines()] if ledger.exists() else []
        kept = []
        for info in shards:   # keep the verified prefix; a damaged shard and everything after it is redone
            path = self.out_dir / info.shard
            if not path.is_file() or path.stat().st_size != info.bytes or sha256_file(path) != info.sha256:
                break
            kept.append(info)
        names = {info.shard for info in kept}
        for path in self.out_dir.iterdir():
            if path.name not in names and (path.suffix == ".tar" or ".tmp" in path.name):
                path.unlink()
        self._write_ledger(kept)
        return kept

    def _write_ledger(self, shards: list[ShardInfo]) -> None:
        tmp = self.out_dir / f"{LEDGER}.tmp"
        tmp.write_text("".join(json.dumps(asdict(s)) + "\n" for s in shards))
        os.replace(tmp, self.out_dir / LEDGER)

    @property
    def num_written(self) -> int:
        """Samples already safely on disk: the next sample index to produce."""
        return sum(s.num_samples for s in self.shards)

    def write_shard(self, samples: list[dict]) -> ShardInfo:
        """Write one shard of samples (dicts with key, latents, prompt_embeds, prompt, meta); atomically."""
        if not samples:
            raise ValueError("write_shard: no samples")
        name = SHARD_PATTERN.format(len(self.shards))
        final, tmp = self.out_dir / name, self.out_dir / f"{name}.tmp"
        with open(tmp, "wb") as f:
            sink = wds.TarWriter(f, encoder=False, mtime=0.0)
            for s in samples:
                sink.write({"__key__": s["key"], "latents.npy": _npy_bytes(s["latents"]),
                            "prompt_embeds.npy": _npy_bytes(s["prompt_embeds"]),
                            "prompt.txt": s["prompt"].encode(), "meta.json": json.dumps(s["meta"]).encode()})
            sink.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        info = ShardInfo(shard=name, num_samples=len(samples), bytes=final.stat().st_size, sha256=sha256_file(final),
                         first_key=samples[0]["key"], last_key=samples[-1]["key"])
        self.shards.append(info)
        self._write_ledger(self.shards)
        return info

    def write_manifest(self, metadata: dict) -> Path:
        """The parquet manifest (one row per shard; `metadata` as JSON schema metadata), written last."""
        cols = {k: [getattr(s, k) for s in self.shards] for k in ShardInfo.__dataclass_fields__}
        table = pa.table(cols).replace_schema_metadata({"anyflow": json.dumps(metadata)})
        tmp = self.out_dir / f"{MANIFEST}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, self.out_dir / MANIFEST)
        return self.out_dir / MANIFEST


@dataclass
class Batch:
    latents: torch.Tensor          # [B, C, F, H, W] float32 (channel-major, the trainers' layout)
    prompt_embeds: torch.Tensor    # [B, S, D] float32, zero-padded to max_sequence_length
    prompts: list[str]
    position: int                  # samples consumed after this batch (pass as `start` to resume)


class ShardReader:
    """Reads a synthesis directory: verifies the manifest against the files, then yields seeded batches."""

    def __init__(self, data_dir: str | Path, verify: bool = True):
        self.dir = Path(data_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise ShardError(f"{self.dir}: no {MANIFEST} (synthesis incomplete or not a shard directory)")
        try:
            table = pq.read_table(path)
            self.metadata = json.loads((table.schema.metadata or {})[b"anyflow"])
        except Exception as e:
            raise ShardError(f"{path}: unreadable manifest ({e})") from None
        self.shards = [ShardInfo(**row) for row in table.to_pylist()]
        if not self.shards:
            raise ShardError(f"{path}: the manifest lists no shards")
        for info in self.shards:
            file = self.dir / info.shard
            if not file.is_file():
                raise ShardError(f"{file}: shard listed in the manifest is missing")
            if file.stat().st_size != info.bytes:
                raise ShardError(f"{file}: size {file.stat().st_size} bytes, manifest says {info.bytes} (truncated?)")
            if verify and sha256_file(file) != info.sha256:
                raise ShardError(f"{file}: checksum mismatch with {path}")
        self.num_samples = sum(s.num_samples for s in self.shards)
        self.max_sequence_length = int(self.metadata["max_sequence_length"])

    def _shard_samples(self, info: ShardInfo) -> Iterator[dict]:
        file = self.dir / info.shard
        try:
            # every process reads whole shards and takes its own slice of each global batch, so webdataset's
            # node/worker splitting is turned off (it refuses to guess under torch.distributed)
            for s in wds.WebDataset(str(file), shardshuffle=False, empty_check=False, nodesplitter=_all,
                                    workersplitter=_all).decode():
                yield s
        except Exception as e:  # tarfile / numpy / json errors from a corrupt member
            raise ShardError(f"{file}: corrupt shard ({type(e).__name__}: {e})") from None

    def epoch_order(self, seed: int, epoch: int, buffer: int = 256) -> Iterator[dict]:
        """All samples once: shards in a seeded order, then a seeded shuffle buffer (same seed → same order)."""
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(self.shards)
        rng.shuffle(order)
        pool: list[dict] = []
        for info in order:
            for sample in self._shard_samples(info):
                pool.append(sample)
                if len(pool) >= buffer:
                    yield pool.pop(rng.randrange(len(pool)))
        while pool:
            yield pool.pop(rng.randrange(len(pool)))

    def _pad(self, embeds: np.ndarray) -> torch.Tensor:
        out = torch.zeros(self.max_sequence_length, embeds.shape[-1])
        out[: len(embeds)] = torch.from_numpy(embeds.astype(np.float32))
        return out

    def stream(self, seed: int, start: int = 0) -> Iterator[dict]:
        """Samples epoch after epoch (each epoch in its own seeded order), skipping the first `start`."""
        epoch, offset = divmod(start, self.num_samples)
        while True:
            samples = self.epoch_order(seed, epoch)
            for _ in range(offset):
                next(samples)
            yield from samples
            epoch, offset = epoch + 1, 0

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """Endless full batches; `start` = samples already consumed (a previous Batch.position), so a resumed
        reader continues exactly where the interrupted one stopped."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stream, position = self.stream(seed, start), start
        while True:
            items = [next(stream) for _ in range(batch_size)]
            position += batch_size
            yield self._collate(items, position)

    def _collate(self, items: list[dict], position: int) -> Batch:
        latents = torch.stack([torch.from_numpy(s["latents.npy"].astype(np.float32)) for s in items])
        return Batch(latents=latents.permute(0, 2, 1, 3, 4).contiguous(),
                     prompt_embeds=torch.stack([self._pad(s["prompt_embeds.npy"]) for s in items]),
                     prompts=[s["prompt.txt"] for s in items], position=position)


def open_shards(data_dir: str | Path, max_sequence_length: int) -> ShardReader:
    """A verified reader for training a model whose prompt embeddings are padded to `max_sequence_length`."""
    reader = ShardReader(data_dir)
    if reader.max_sequence_length != max_sequence_length:
        raise ShardError(f"{data_dir}: shards padded to {reader.max_sequence_length} tokens, the model uses "
                         f"{max_sequence_length}")
    return reader


def real_rows(embeds: torch.Tensor) -> list[np.ndarray]:
    """Strip the Wan zero padding: each prompt's real-token rows [n_i, D] (readers pad them back)."""
    n_real = (embeds.abs().amax(dim=-1) > 0).sum(dim=1)
    return [e[:n].numpy() for e, n in zip(embeds, n_real.tolist())]
