# Shortcuts for the README's two commands (scripts/demo.sh, scripts/test.sh), which set
# everything up first (idempotent) and need only bash and python3.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint typecheck unit bench

setup:
	@bash scripts/setup.sh

## demo: the main job, on the embedded defaults (SQLite, local archive, shipped phantom model)
demo:
	@bash scripts/demo.sh

## test: ruff, mypy (strict) and pytest (the same as scripts/test.sh, which CI runs)
test:
	@bash scripts/test.sh

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
	$(PY) -m bench.predict_cpu
	$(PY) -m bench.end_to_end
