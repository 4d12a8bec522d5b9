# Two entry points (README): `make run` (main job) and `make test` (test suite).
# Both create .venv if missing: CPU torch 2.13 first when no CUDA is present (a plain `torch` would pull
# a multi-GB CUDA build), then the project with its pins (pyproject.toml).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PRESET ?= toy
SET    ?=
STAMP  := $(VENV)/.installed
# pip would byte-compile every file it installs (all of torch's); Python compiles what a run imports on first
# use instead. Measured on a 2-core machine: set-up 163 s -> 106 s, the first import included.
PIP    := $(PY) -m pip install -q --no-compile

# Offline, quiet, reproducible defaults (DESIGN §10); override from the environment if needed.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DO_NOT_TRACK ?= true
export MLFLOW_DISABLE_TELEMETRY ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PIP_DISABLE_PIP_VERSION_CHECK ?= 1

.PHONY: run test setup teacher-asset clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    echo "[setup] CUDA present: installing torch from the default index"; \
	    $(PIP) "torch>=2.6,<2.14" 2>&1 | grep -v "is ignored" || true; \
	else \
	    echo "[setup] no CUDA: installing CPU torch 2.13.0"; \
	    $(PIP) torch==2.13.0 2>&1 | grep -v "is ignored" || true; \
	fi
	@$(PY) -c "import torch" || { echo "[setup] torch failed to install"; exit 1; }
	@echo "[setup] installing the project and its test dependencies"
	@$(PIP) -e ".[test]" 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import anyflow, conf, prefect, mlflow, diffusers, peft" || { echo "[setup] project install failed"; exit 1; }
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m flows run --preset $(PRESET) $(foreach s,$(SET),--set $(s))

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Re-train the preset's toy teacher (or re-use its cached build) and pack it into assets/toy-teacher,
# the prebuilt teacher that `make run` installs (needed after editing the teacher code or its config).
teacher-asset: $(STAMP)
	$(PY) -m flows teacher-asset --preset $(PRESET) $(foreach s,$(SET),--set $(s))

clean-venv:
	rm -rf $(VENV)
