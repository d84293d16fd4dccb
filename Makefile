# leadscore developer commands. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Material for MkDocs prints a notice about its successor on every build; the build is what counts.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

# The pure core compiled by mypyc (C extensions next to the sources). Where compiling fails
# (no C compiler), the same code runs interpreted; stage_router/compiled.py explains the switch.
# Intake stays interpreted: compiled it gained 15%, and the isolation tests replace its
# validation at run time to play a gap in it, which a compiled module cannot allow.
CORE := scoring_service/rules.py scoring_service/effects.py scoring_service/lead_scores.py \
	scoring_service/routing.py scoring_service/engine.py scoring_service/accounts.py \
	scoring_service/scores.py scoring_service/journey.py scoring_service/model_score.py \
	scoring_service/state.py scoring_service/pipeline.py \
	stage_router/lifecycle.py stage_router/records.py stage_router/accounts.py
COMPILED := .leadscore/compiled-core

.DEFAULT_GOAL := help
.PHONY: help install compile tools bench-tools kafka run send test test-unit lint typecheck docs docs-serve bench bench-challenger bench-history bench-console bench-funnel bench-journey bench-impact bench-erasures bench-restart review-demo model-demo demo-cluster soak clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools tells every editable install of a package at the top of its directory to
	@# mind same-named folders: information, not a fault, and the only line it would print.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the service with its test tools

$(COMPILED): $(STAMP) $(CORE) schemas/*.py build_core.py Makefile
	@mkdir -p .leadscore
	@echo "compiling the pure core with mypyc (log: .leadscore/mypyc.log)"
	@# The touch: setuptools copies a module's unchanged shim with its old time, which would
	@# look older than the edited source and send the whole package back to interpreted.
	@if $(PY) build_core.py $(CORE) >.leadscore/mypyc.log 2>&1; then \
	  touch scoring_service/*.so stage_router/*.so $@; else \
	  echo "mypyc failed (see .leadscore/mypyc.log): the core runs interpreted"; \
	  rm -f scoring_service/*.so stage_router/*.so; touch $@; fi

compile: $(COMPILED) ## Compile the pure core with mypyc (run, test and bench do it when needed)

run: $(COMPILED) ## Start the service (embedded Apache Kafka and PostgreSQL unless configured otherwise)
	$(PY) -m services.runtime

# Debian's packages the tests use: prometheus (operations tests), chromium (console browser
# tests), and a Java runtime with Maven for the embedded Apache Kafka (its jars come from
# Maven Central on first start; services/runtime/embedded-kafka/pom.xml).
tools: ## Debian's prometheus, chromium, and Java 17 with Maven (the embedded Apache Kafka)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && \
	  command -v chromium >/dev/null && command -v java >/dev/null && \
	  command -v mvn >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   --no-install-recommends prometheus chromium openjdk-17-jre-headless maven >/dev/null)

kafka: $(STAMP) ## Resolve the embedded Apache Kafka's jars with Maven (run, test and bench do it when needed)
	$(PY) -c "from services.runtime.embedded import kafka_jars, PROJECT_ROOT; print(kafka_jars(PROJECT_ROOT / '.leadscore'))"

test: $(COMPILED) tools ## Lint, type-check, check the layers, build the docs strictly, the whole suite, the unit tests interpreted
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(MKDOCS) build --strict --quiet --site-dir .leadscore/site-check
	LEADSCORE_EXPECT_COMPILED=$$(ls scoring_service/engine.*.so >/dev/null 2>&1 && echo 1) \
	  $(PY) -m pytest --durations=15
	LEADSCORE_INTERPRETED=1 $(PY) -m pytest -q tests/unit

test-unit: $(COMPILED) ## Run the pure unit tests only
	$(PY) -m pytest tests/unit

lint: $(STAMP) ## ruff, mypy --strict and the import layers (import-linter)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

docs: $(STAMP) ## Build the docs site into site/ (strict: a broken link fails); open site/index.html
	$(MKDOCS) build --strict

docs-serve: $(STAMP) ## Serve the docs site on http://127.0.0.1:8001 with live reload
	$(MKDOCS) serve --dev-addr 127.0.0.1:8001

typecheck: $(STAMP) ## mypy --strict over schemas, scoring_service, stage_router, services
	$(PY) -m mypy

# Debian's valgrind: `make bench` counts the engine's instructions per event with it
# (bench/instructions.py); without it those figures are skipped, not failed.
bench-tools: ## Debian's valgrind (the engine's instruction counts in make bench)
	@command -v valgrind >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   --no-install-recommends valgrind >/dev/null) || \
	  echo "valgrind could not be installed: make bench skips the instruction counts"

bench: $(COMPILED) bench-tools ## Benchmarks: ceiling, end to end, 5 min at 2,000 ev/s, 1 min at 5,000, engine, RSS, CPU and WAL per event (~12 min)
	$(PY) -m bench.run

bench-funnel: $(COMPILED) ## The funnel report on 1,000,000 transitions
	$(PY) -m bench.funnel_bench

bench-journey: $(COMPILED) ## The journey report on 1,000,000 events of history (target < 3 s)
	$(PY) -m bench.journey_bench

bench-console: $(COMPILED) ## Server time of every console page on 20,000 leads (target < 300 ms)
	$(PY) -m bench.console_bench

bench-challenger: $(COMPILED) ## A challenger's cost: the same backlog drained without and with one (target < 1.6x)
	$(PY) -m bench.run --challenger-only --events 100000 --leads 10000 --accounts 1000

review-demo: $(COMPILED) ## One quarterly review on a generated history with planted outcomes (docs/guides/review.md)
	$(PY) -m bench.review_demo

bench-impact: $(COMPILED) ## How much an impact job slows live scoring
	$(PY) -m bench.impact_interference --history 100000

bench-erasures: $(COMPILED) ## Scoring beside 10,000 erasure requests queued at once, against scoring alone
	$(PY) -m bench.erasure_interference

bench-history: $(COMPILED) ## End to end on 0, 2M and 20M stored history rows (then 0 again): does cost grow with history?
	$(PY) -m bench.history

bench-restart: $(COMPILED) ## Seconds from a restart after kill -9 to ready and to work, static vs dynamic membership
	$(PY) -m bench.restart

model-demo: $(COMPILED) ## A learned score against the starter rules on 1,000,000 generated events with planted outcomes
	$(PY) -m bench.model_demo

demo-cluster: $(COMPILED) ## Three instances share six partitions; one is killed; scores still match
	$(PY) -m bench.cluster

soak: $(COMPILED) ## 60 minutes at 1,000 ev/s: RSS and p99 must not drift (end vs warm-up, last vs first 10 minutes)
	$(PY) -m bench.run --soak --events 20000 --rate 1000 --seconds 3600

send: $(COMPILED) ## Send the example journey (examples/journey.jsonl) to a running service
	$(VENV)/bin/leadscore send examples/journey.jsonl

clean: ## Remove the virtual environment, local data and compiled modules
	rm -rf $(VENV) .leadscore build site *__mypyc*.so scoring_service/*.so stage_router/*.so
