# TR7 metering: `make test` sets up a fresh Debian machine and runs every check.
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup test lint bench demo packages clean

setup:
	bash scripts/bootstrap.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# pytest exits 5 when it collected no test: that is a failure here, as any non-zero exit.
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -ra

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The whole pipeline on real simulators (docs/demo.md); DEMO_ARGS=--no-wait stops at the end.
demo: setup
	$(BIN)/python -m scripts.demo $(DEMO_ARGS)

packages: setup
	bash packaging/build.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
