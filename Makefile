# Developer commands. The environment is .venv/ (scripts/setup-env.sh creates it); PY points elsewhere if needed.
PY ?= .venv/bin/python
TEST_ENV = VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: check lint format-check typecheck layering format test-fast test test-mcore-latest

## check: everything `.ci/run` requires before the tests (lint, formatting, types, layering)
check: lint format-check typecheck layering

lint:
	$(PY) -m ruff check .

format-check:
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy

layering:
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_layering.py

## format: rewrite the code in the project's format and apply the linter's safe fixes
format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## test-fast: the suite without the slow, vLLM and Megatron tests (a few minutes on 2 cores)
test-fast:
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow and not vllm and not megatron"

## test: the whole suite (GPU tests skip themselves where there is no GPU)
test:
	$(TEST_ENV) $(PY) -m pytest -q

## test-mcore-latest: the Megatron tests on the other end of the train extra's range, megatron-core 0.19.x on
## Python 3.12 (.venv-mcore019/, built by scripts/setup-env-mcore-latest.sh; about 6 GB)
test-mcore-latest:
	./scripts/setup-env-mcore-latest.sh
	$(TEST_ENV) .venv-mcore019/bin/python -m pytest -q -m megatron tests/train
