"""Prompt sources for synthesis and evaluation: the toy world, a file (.jsonl / .parquet / .txt), or an HF
`datasets` dataset ("hf:<name or path>[:<split>]"). Errors name the file (and line) at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

from anyflow import toyworld

TEXT_FIELDS = ("prompt", "text", "caption")   # the first present field is the prompt


def _pick(record: dict, where: str) -> str:
    for field in TEXT_FIELDS:
        if field in record:
            value = record[field]
            if not isinstance(value, str):
                raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
            return value.strip()
    raise ValueError(f"{where}: no prompt field (expected one of {list(TEXT_FIELDS)}), got keys {sorted(record)}")


def _from_jsonl(path: Path) -> list[str]:
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
        prompts.append(_pick(record, f"{path}:{n}"))
    return prompts


def _from_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    field = next((f for f in TEXT_FIELDS if f in table.column_names), None)
    if field is None:
        raise ValueError(f"{path}: no prompt column (expected one of {list(TEXT_FIELDS)}), got {table.column_names}")
    return [str(p).strip() for p in table.column(field).to_pylist() if p is not None]


def _from_hf(spec: str) -> list[str]:
    import datasets

    name, _, split = spec.partition(":")
    ds = datasets.load_dataset(name, split=split or "train")
    field = next((f for f in TEXT_FIELDS if f in ds.column_names), None)
    if field is None:
        raise ValueError(f"hf:{spec}: no prompt column (expected one of {list(TEXT_FIELDS)}), got {ds.column_names}")
    return [str(p).strip() for p in ds[field]]


def load_prompts(source: str, num: int, seed: int = 0, world: toyworld.WorldSpec | None = None) -> list[str]:
    """`num` prompts from `source`: "toy" samples the toy world's base domain (seeded); a file or dataset is
    cycled in order to length `num` (its prompts repeat with different noise seeds downstream)."""
    if num < 1:
        raise ValueError(f"number of prompts must be >= 1, got {num}")
    if source == "toy":
        return [c.prompt for c in toyworld.sample_conditions(num, seed, "base", world or toyworld.WorldSpec())]
    if source.startswith("hf:"):
        prompts = _from_hf(source[3:])
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} does not exist")
        readers = {".jsonl": _from_jsonl, ".parquet": _from_parquet,
                   ".txt": lambda p: [line.strip() for line in p.read_text().splitlines()]}
        if path.suffix not in readers:
            raise ValueError(f"prompt file {path}: unsupported type {path.suffix!r} (use .jsonl, .parquet or .txt)")
        prompts = readers[path.suffix](path)
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"prompt source {source!r} holds no (non-empty) prompts")
    return [prompts[i % len(prompts)] for i in range(num)]
