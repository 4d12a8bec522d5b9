"""Prompt sources: toy world, .jsonl / .parquet / .txt files, HF datasets; bad files are named."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anyflow.prompts import load_prompts


def test_toy_prompts_are_seeded():
    a = load_prompts("toy", 10, seed=3)
    assert a == load_prompts("toy", 10, seed=3) and a != load_prompts("toy", 10, seed=4)
    assert all(p.startswith("a ") and p.endswith("background") for p in a)


def test_files_are_read_and_cycled(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    assert load_prompts(str(tmp_path / "p.txt"), 5) == ["a cat", "a dog", "a cat", "a dog", "a cat"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"caption": "y"}) + "\n")
    assert load_prompts(str(tmp_path / "p.jsonl"), 2) == ["x", "y"]
    pq.write_table(pa.table({"text": ["u", "v", None]}), tmp_path / "p.parquet")
    assert load_prompts(str(tmp_path / "p.parquet"), 3) == ["u", "v", "u"]


def test_hf_dataset_source(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["h1", "h2"]}).to_parquet(str(tmp_path / "train.parquet"))
    assert load_prompts(f"hf:{tmp_path}", 2) == ["h1", "h2"]


@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", "\n  \n", "no \\(non-empty\\) prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{oops\n', "bad.jsonl:2: invalid JSON"),
    ("nofield.jsonl", '{"title": "x"}\n', "nofield.jsonl:1: no prompt field"),
    ("p.csv", "a,b\n", "unsupported type '.csv'"),
])
def test_bad_prompt_files_are_named(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        load_prompts(str(tmp_path / name), 3)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompts(str(tmp_path / "nope.txt"), 3)
