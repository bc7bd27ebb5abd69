# falcon-lake: every target sets up what it needs, so each works as the first command on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA_PORT ?= 9092
MOTO_PORT ?= 4566
# Test processes run side by side (pytest-xdist): most of a test waits on a broker or a child
# process, so more workers than cores pays. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 4
export KAFKA_PORT MOTO_PORT

.PHONY: help venv demo test test-unit test-integration test-faults lint bench bench-record kafka-up kafka-down moto-up moto-down clean

help:
	@echo "make demo          run the whole pipeline locally on generated events and check the result"
	@echo "make test          run the test suite (starts and stops its own broker and moto)"
	@echo "make lint          ruff + mypy"
	@echo "make bench         benchmarks; prints a table, writes bench/results/local/ (ignored by git)"
	@echo "make bench-record  copy the last full make bench table to the committed bench/results/latest.md"
	@echo "make kafka-up/down start/stop a local Apache Kafka broker on 127.0.0.1:$(KAFKA_PORT)"
	@echo "make moto-up/down  start/stop moto (SSM, Secrets Manager) on 127.0.0.1:$(MOTO_PORT)"

venv: $(STAMP)

# uv (from PyPI) installs the pinned set in seconds instead of pip's minute; pip is the fallback.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -m pip install -q -c constraints.txt uv 2>/dev/null \
		&& $(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt -e ".[dev]"; then \
		echo "virtualenv: installed with uv"; \
	else \
		echo "virtualenv: uv unavailable, installing with pip"; \
		$(BIN)/python -m pip install -q --upgrade pip && \
		$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	scripts/kafka.sh fetch
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	scripts/kafka.sh fetch
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal tests/integration $(PYTEST_ARGS)

test-faults: $(STAMP)
	scripts/kafka.sh fetch
	FAULT_EVENTS=$${FAULT_EVENTS:-50000} $(BIN)/python -m pytest tests/faults -v $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	scripts/kafka.sh fetch
	$(BIN)/python -m bench.run

bench-record: $(STAMP)
	$(BIN)/python -m bench.run record

kafka-up: $(STAMP)
	scripts/kafka.sh start

kafka-down:
	scripts/kafka.sh stop

moto-up: $(STAMP)
	scripts/moto.sh start

moto-down:
	scripts/moto.sh stop

clean: kafka-down moto-down
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
