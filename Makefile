# The platform's tasks. `make` alone lists them.
# uv is found on PATH, or installed into .tools/ on first use; Python 3.12 is
# taken from pyenv when present (uv cannot download interpreters here).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYENV_312 := $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12)))
export UV_PYTHON ?= $(or $(PYENV_312),3.12)
export UV_PYTHON_DOWNLOADS ?= never
export UV_LINK_MODE ?= copy
# Bytecode compiled at install, as pip does and as the Docker image does: where
# PYTHONDONTWRITEBYTECODE is set (some sandboxes and CI runners) every process would otherwise
# compile SQLAlchemy, Celery and the rest from source at start-up (about 1 s per process here).
export UV_COMPILE_BYTECODE ?= 1
UV := $(shell for c in uv "$(CURDIR)/.tools/bin/uv"; do "$$c" --version >/dev/null 2>&1 && { command -v "$$c" || echo "$$c"; } && break; done)
ifeq ($(UV),)
UV := $(CURDIR)/.tools/bin/uv
endif
RUN := $(UV) run --locked

# Tests use their own database and Redis db, never the development ones. They run in
# JOBS_TEST_WORKERS processes (pytest-xdist), each on its own database and Redis db derived
# from these: process N on jobs_gwN_test and Redis db 11 - N (tests/support/isolation.py).
# JOBS_TEST_WORKERS=0 runs them in one process, on jobs_test and db 11 themselves.
# Three processes keep two cores busy while tests wait on timers; a fourth gained ~5%.
TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/jobs_test
TEST_BROKER_URL ?= redis://127.0.0.1:6379/11
JOBS_TEST_WORKERS ?= 3

.PHONY: help
help: ## Show this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(CURDIR)/.tools/bin/uv:
	python3 -m venv "$(CURDIR)/.tools"
	"$(CURDIR)/.tools/bin/pip" install --quiet uv

.PHONY: install
install: $(if $(filter $(CURDIR)/.tools/bin/uv,$(UV)),$(UV)) ## Install the project and its dev tools into .venv
	$(UV) sync --locked
	$(UV) run --locked --no-sync python -m compileall -q jobs workers beat

.PHONY: dev
dev: install ## Run the platform: migrations, worker, beat, Flower, and a first job (Ctrl-C stops)
	$(RUN) jobs dev

.PHONY: test
test: install ## Run all tests (unit, integration, acceptance, faults) in parallel, with coverage
	JOBS_DATABASE_URL=$(TEST_DATABASE_URL) JOBS_BROKER_URL=$(TEST_BROKER_URL) \
		$(RUN) pytest -n $(JOBS_TEST_WORKERS) --cov --cov-report=term --durations=15 $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## Run the unit tests only (no servers needed)
	$(RUN) pytest tests/unit $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff, format check, mypy (strict; tests may leave functions unannotated), import layers, bandit
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) lint-imports
	$(RUN) bandit -q -c pyproject.toml -r jobs workers beat

.PHONY: fmt
fmt: install ## Format and fix what ruff can
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

.PHONY: migrate
migrate: install ## Create the database if missing and migrate it to the newest schema
	$(RUN) jobs db upgrade --create-database

.PHONY: worker
worker: install ## Run a worker
	$(RUN) jobs worker

.PHONY: beat
beat: install ## Run the leader (beat)
	$(RUN) jobs beat

.PHONY: flower
flower: install ## Run Flower (needs JOBS_FLOWER_USER and JOBS_FLOWER_PASSWORD)
	$(RUN) jobs flower

.PHONY: clean
clean: ## Remove caches and build output
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov dist build

# The benchmark uses its own database and Redis db, never the development or test ones.
BENCH_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/jobs_bench
BENCH_BROKER_URL ?= redis://127.0.0.1:6379/12

.PHONY: bench
bench: install ## Compare bare Celery and the platform (BENCH_ARGS="--rounds 1"); see docs/performance.md
	JOBS_DATABASE_URL=$(BENCH_DATABASE_URL) JOBS_BROKER_URL=$(BENCH_BROKER_URL) \
		$(RUN) python -m tests.bench $(BENCH_ARGS)

.PHONY: bench-cli
bench-cli: install ## Time the jobs command's start-up (--help, completion, status, list, submit...); BENCH_ARGS="--runs 20"
	JOBS_DATABASE_URL=$(BENCH_DATABASE_URL) JOBS_BROKER_URL=$(BENCH_BROKER_URL) \
		$(RUN) python -m tests.bench.cli $(BENCH_ARGS)

# The soak runs on private servers it starts and stops itself (never the shared ones).
SOAK_MINUTES ?= 5

.PHONY: soak
soak: install ## Random faults (kills, Redis loss, PostgreSQL restarts) against a steady load; SOAK_MINUTES=5
	$(RUN) python -m tests.faults.soak --minutes $(SOAK_MINUTES)

# Docker: the stack in docker-compose.yml (needs a .env made from .env.example; see docs/deploy.md).
COMPOSE ?= docker compose

.PHONY: up
up: ## Build the image and start the Docker stack in the background (docker compose)
	$(COMPOSE) up --build --detach

.PHONY: down
down: ## Stop the Docker stack (its volumes, and so the data, are kept)
	$(COMPOSE) down

.PHONY: logs
logs: ## Follow the Docker stack's logs (SERVICE=worker for one service)
	$(COMPOSE) logs --follow --tail=200 $(SERVICE)

.PHONY: deploy-check
deploy-check: install ## Validate docker-compose.yml and lint the Dockerfile, without a Docker engine
	bash .ci/deploy-checks
