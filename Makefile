# The two commands of the README. Both set everything up first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint typecheck unit bench

setup:
	@bash scripts/setup.sh

## demo: the main job, on the embedded defaults (SQLite, local archive, shipped phantom model)
demo: setup
	@$(VENV)/bin/dicomnode demo

## test: ruff, mypy (strict) and pytest
test: setup lint typecheck unit

lint:
	$(VENV)/bin/ruff check glipcore dicomnode tests bench
	$(VENV)/bin/ruff format --check glipcore dicomnode tests bench

typecheck:
	$(VENV)/bin/mypy

unit:
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.decode
	$(PY) -m bench.unet_cpu
