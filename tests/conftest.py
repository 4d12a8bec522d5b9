"""Shared fixtures. Everything here is tiny: the suite must stay fast on 2 CPU cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def ci_config():
    import conf

    return conf.load("ci")


@pytest.fixture(scope="session")
def ci_teacher(ci_config, tmp_path_factory):
    """The ci-preset toy teacher, built once per session through the teacher task."""
    from tasks.teacher import build_teacher

    cfg = ci_config.model_copy(update={"paths": ci_config.paths.model_copy(
        update={"root": str(tmp_path_factory.mktemp("runs"))})})
    return build_teacher(cfg, progress=False)


@pytest.fixture(scope="session")
def random_wan_folder(tmp_path_factory):
    """A tiny random-weight Wan2.1 folder in the real format (AutoencoderKLWan, UMT5, T5 tokenizer)."""
    from anyflow.randomwan import build_random_wan_folder

    return build_random_wan_folder(tmp_path_factory.mktemp("wan") / "tiny-wan")
