.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

MODEL ?= nw
DATASET ?= sine
TRIALS ?= 20
TIMEOUT ?=
JOBS ?= 0
DEVICE ?= auto
STORAGE ?=
SEED ?= 0
EPOCHS ?=
NAME ?=
PYTEST_ARGS ?=

TUNE_ARGS = --model $(MODEL) --dataset $(DATASET) --trials $(TRIALS) --jobs $(JOBS) --device $(DEVICE) --seed $(SEED) \
	$(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(STORAGE),--storage '$(STORAGE)') $(if $(EPOCHS),--epochs $(EPOCHS))

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	@python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "Python 3.11 is required (python3 is $$(python3 --version))"; exit 1; }
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.lock
	touch $(STAMP)

.PHONY: install
install: $(STAMP) java ## Make .venv with the pinned dependencies and check Java 17 for TorchServe

.PHONY: java
java: ## Check for Java 17+ (TorchServe); install openjdk-17-jre-headless with apt when possible
	@if java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then exit 0; fi; \
	echo "TorchServe needs Java 17+; trying apt-get install openjdk-17-jre-headless ..."; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	if command -v apt-get >/dev/null && { [ -z "$$SUDO" ] || sudo -n true 2>/dev/null; }; then \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openjdk-17-jre-headless; \
	else \
		echo "Cannot install Java here. Install a Java 17+ runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless;"; \
		echo "macOS: brew install openjdk@17) and put 'java' on PATH, then run make again."; exit 1; \
	fi

.PHONY: test
test: install lint ## Run the whole test suite (installs what it needs)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## Lint and format check (ruff)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: tune
tune: $(STAMP) ## Tune: make tune MODEL=nw|mha|s2s DATASET=sine|diabetes|adding|digits|dates TRIALS=20 [TIMEOUT= JOBS= DEVICE= STORAGE= SEED= EPOCHS=]
	$(PYTHON) -m training tune $(TUNE_ARGS)

.PHONY: archive
archive: $(STAMP) ## Build archives/<name>.mar from the registry's @champion: make archive [NAME=nw-sine] (default: every champion)
	$(PYTHON) -m training archive $(if $(NAME),--name $(NAME))

.PHONY: serve
serve: install ## Start TorchServe in the background with every archive, wait until healthy
	$(PYTHON) -m training serve

.PHONY: stop
stop: $(STAMP) ## Stop TorchServe
	$(PYTHON) -m training stop

.PHONY: ui
ui: $(STAMP) ## MLflow UI on http://127.0.0.1:5000 over mlruns/
	$(PYTHON) -m training ui

.PHONY: demo
demo: install ## The main job: tune nw-sine and mha-adding, archive, serve, query, stop
	$(PYTHON) -m training demo

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks, write benchmarks/results.md and results.json
	$(PYTHON) -m benchmarks

.PHONY: clean
clean: ## Remove built archives, TorchServe logs and caches (keeps mlruns/ and .venv)
	rm -rf archives/*.mar logs .serve .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
