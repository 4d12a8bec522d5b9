"""Shared fixtures. Everything here is tiny: the suite must stay fast on 2 CPU cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

import pytest
import torch
from prefect.logging.configuration import setup_logging

# Bind Prefect's console log handler to the session's stderr now: if it were first set up inside a test
# that captures output (capsys), it would keep writing to that test's closed stream afterwards.
setup_logging()

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


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server + database for the whole session (start-up costs 10-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
