# leadscore developer commands. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install tools run send test test-unit lint typecheck bench bench-funnel bench-impact demo-cluster soak clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the service with its test tools

run: $(STAMP) ## Start the service (embedded broker and database unless configured otherwise)
	$(PY) -m services.main

tools: ## Debian's prometheus package (promtool and the server) for the operations tests
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   --no-install-recommends prometheus >/dev/null)

test: $(STAMP) tools ## Lint, type-check, check the layers, then the whole suite (real broker and database)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest --durations=15

test-unit: $(STAMP) ## Run the pure unit tests only
	$(PY) -m pytest tests/unit

lint: $(STAMP) ## ruff, mypy --strict and the import layers (import-linter)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

typecheck: $(STAMP) ## mypy --strict over schemas, scoring_service, stage_router, services
	$(PY) -m mypy

bench: $(STAMP) ## Benchmarks: ceiling, end to end, latency at 2,000 ev/s, engine, RSS (~5 min)
	$(PY) -m bench.run

bench-funnel: $(STAMP) ## The funnel report on 1,000,000 transitions
	$(PY) -m bench.funnel_bench

bench-impact: $(STAMP) ## How much an impact job slows live scoring
	$(PY) -m bench.impact_interference --history 100000

demo-cluster: $(STAMP) ## Three instances share six partitions; one is killed; scores still match
	$(PY) -m bench.cluster

soak: $(STAMP) ## 10 minutes at 2,000 ev/s: RSS after warm-up and at the end (use a real Kafka)
	$(PY) -m bench.run --events 20000 --seconds 600

send: $(STAMP) ## Send the example journey (examples/journey.jsonl) to a running service
	$(VENV)/bin/leadscore send examples/journey.jsonl

clean: ## Remove the virtual environment and local data
	rm -rf $(VENV) .leadscore
