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
CONCLUDE ?= 1
HEARTBEAT ?=
GRACE ?=
HOST ?=
PORT ?=
PROGRESS ?= 1
PG_PORT ?=
INTERVAL ?=
ALLOWED_HOSTS ?=
DATA ?=
TARGET ?=
FEATURES ?=
TASK ?=
ID ?=
ORDER ?=
TRUST_UNSIGNED ?=
EXPLAIN_KEYS ?=
OUT ?=
BATCH_ROWS ?=
PYTEST_ARGS ?=

DATA_ARGS = $(if $(DATA),--data '$(DATA)' $(if $(TARGET),--target '$(TARGET)') $(if $(FEATURES),--features '$(FEATURES)') \
	$(if $(TASK),--task $(TASK)) $(if $(NAME),--name '$(NAME)') $(if $(ID),--id '$(ID)') $(if $(ORDER),--order '$(ORDER)'),--dataset $(DATASET))
HEARTBEAT_ARGS = $(if $(HEARTBEAT),--heartbeat $(HEARTBEAT)) $(if $(GRACE),--grace $(GRACE))
TUNE_ARGS = --model $(MODEL) $(DATA_ARGS) --trials $(TRIALS) --jobs $(JOBS) --device $(DEVICE) --seed $(SEED) \
	$(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(STORAGE),--storage '$(STORAGE)') $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(filter 0,$(CONCLUDE)),--no-conclude) $(HEARTBEAT_ARGS) $(if $(filter 0,$(PROGRESS)),--no-progress)

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
install: $(STAMP) java prometheus ## Make .venv with the pinned dependencies; check Java 17 (TorchServe) and Prometheus (make monitor)

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

.PHONY: test-fast
test-fast: $(STAMP) lint ## The fast part alone: every test without the e2e marker (no TorchServe, tracking server or bench)
	$(PYTHON) -m pytest -m "not e2e" $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## Lint and format check (ruff)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: tune
tune: $(STAMP) ## Tune: make tune MODEL=nw|mha|s2s|pixel DATASET=sine|diabetes|adding|digits|dates TRIALS=20 [TIMEOUT= JOBS= DEVICE= STORAGE= SEED= EPOCHS= CONCLUDE=0|1 HEARTBEAT= GRACE= PROGRESS=0], or on your file: DATA=file.csv|.parquet TARGET=col [FEATURES=a,b TASK= NAME= ID= ORDER=]
	$(PYTHON) -m training tune $(TUNE_ARGS)

.PHONY: conclude
conclude: $(STAMP) ## Refit a study's best trial, register it if new, @champion by validation: make conclude NAME=nw-sine [STORAGE=]
	$(if $(NAME),,$(error NAME is required: make conclude NAME=nw-sine))
	$(PYTHON) -m training conclude --name $(NAME) --device $(DEVICE) $(if $(STORAGE),--storage '$(STORAGE)') $(HEARTBEAT_ARGS)

.PHONY: tracking-server
tracking-server: $(STAMP) ## Local PostgreSQL + mlflow server for many workers: [PORT=5000 PG_PORT=5433 HOST=127.0.0.1 ALLOWED_HOSTS=]
	$(PYTHON) -m training tracking-server $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(if $(PG_PORT),--pg-port $(PG_PORT)) $(if $(ALLOWED_HOSTS),--allowed-hosts $(ALLOWED_HOSTS))

.PHONY: tracking-server-stop
tracking-server-stop: $(STAMP) ## Stop the tracking server started by make tracking-server (its data stays in .tracking/)
	$(PYTHON) -m training tracking-server-stop

.PHONY: archive
archive: $(STAMP) ## Build archives/<name>.mar from the registry's @champion: make archive [NAME=nw-sine] [EXPLAIN_KEYS=values|index|none]
	$(PYTHON) -m training archive $(if $(NAME),--name $(NAME)) $(if $(EXPLAIN_KEYS),--explain-keys $(EXPLAIN_KEYS))

.PHONY: score
score: $(STAMP) ## Score a file with the registry's @champion, no server: make score NAME=nw-wine DATA=file.csv|.parquet OUT=predictions.csv [BATCH_ROWS=]
	@test -n "$(NAME)" -a -n "$(DATA)" -a -n "$(OUT)" || { echo "NAME, DATA and OUT are required, e.g. make score NAME=nw-wine DATA=wine.csv OUT=predictions.csv"; exit 2; }
	$(PYTHON) -m training score --name '$(NAME)' --data '$(DATA)' --out '$(OUT)' $(if $(BATCH_ROWS),--batch-rows $(BATCH_ROWS))

.PHONY: serve
serve: install ## Start TorchServe in the background with every archive (each verified first), wait until healthy [TRUST_UNSIGNED=1]
	$(PYTHON) -m training serve $(if $(filter 1,$(TRUST_UNSIGNED)),--trust-unsigned)

.PHONY: deploy
deploy: $(STAMP) ## Roll the newly archived champion into the running server, no request dropped: make deploy NAME=nw-sine
	@test -n "$(NAME)" || { echo "NAME is required, e.g. make deploy NAME=nw-sine"; exit 2; }
	$(PYTHON) -m training deploy --name $(NAME) $(if $(filter 1,$(TRUST_UNSIGNED)),--trust-unsigned)

.PHONY: rollback
rollback: $(STAMP) ## Return the running server to the version served before the last rollout, no request dropped: make rollback NAME=nw-sine
	@test -n "$(NAME)" || { echo "NAME is required, e.g. make rollback NAME=nw-sine"; exit 2; }
	$(PYTHON) -m training rollback --name $(NAME) $(if $(filter 1,$(TRUST_UNSIGNED)),--trust-unsigned)

.PHONY: stop
stop: $(STAMP) ## Stop TorchServe (returns when the whole server process tree is gone)
	$(PYTHON) -m training stop

.PHONY: prometheus
prometheus: ## Check for Prometheus (make monitor); install Debian's prometheus package with apt when possible
	@if command -v prometheus >/dev/null; then exit 0; fi; \
	echo "make monitor needs Prometheus; trying apt-get install prometheus ..."; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	if command -v apt-get >/dev/null && { [ -z "$$SUDO" ] || sudo -n true 2>/dev/null; }; then \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else \
		echo "Cannot install Prometheus here. Install it (Debian/Ubuntu: apt-get install prometheus; macOS: brew install"; \
		echo "prometheus; or a release from prometheus.io) and put 'prometheus' on PATH, then run make again."; exit 1; \
	fi

.PHONY: monitor
monitor: $(STAMP) prometheus ## Prometheus on http://127.0.0.1:9090 scraping the running TorchServe, with alert rules: make monitor [PORT=9090 INTERVAL=15s]
	$(PYTHON) -m training monitor $(if $(PORT),--port $(PORT)) $(if $(INTERVAL),--interval $(INTERVAL))

.PHONY: monitor-stop
monitor-stop: $(STAMP) ## Stop the Prometheus started by make monitor (its series stay in .monitor/)
	$(PYTHON) -m training monitor-stop

.PHONY: ui
ui: $(STAMP) ## MLflow UI on http://127.0.0.1:5000 over mlruns/: make ui [PORT=5000] (with an http MLFLOW_TRACKING_URI: prints that server's URL)
	$(PYTHON) -m training ui $(if $(PORT),--port $(PORT))

.PHONY: dashboard
dashboard: $(STAMP) ## optuna-dashboard on http://127.0.0.1:8083 over the Optuna storage: make dashboard [PORT=8083 STORAGE=]
	$(PYTHON) -m training dashboard $(if $(PORT),--port $(PORT)) $(if $(STORAGE),--storage '$(STORAGE)')

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
