.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Variables (MODEL, NAME, PORT, ...) change a target only when given on make's command line: `make deploy
# NAME=nw-sine`. One of the same name in the environment (an exported NAME, HOST or PORT in your shell) changes
# nothing, and neither does one left out: the CLI's defaults hold (tune's are `TuneOptions`' in
# training/search/options.py), so each default lives in one place.
#
# Each value reaches the command as exactly one argument, whatever it holds (spaces, quotes, `;`, `$(...)`,
# backticks): `given` reads the variable's text unexpanded (`$(value ...)`, so make does not expand a `$(...)` in
# it either), and `quote` writes it as one single-quoted shell word, each `'` in it as `'\''` (close the quote,
# an escaped quote, reopen). `$(call arg,--flag,VAR)` is `--flag 'value'` when VAR was given, else nothing;
# `$(call switch,--flag,VAR,VALUE)` is `--flag` when VAR was given as VALUE (CONCLUDE=0, TRUST_UNSIGNED=1).
given = $(if $(filter command line,$(origin $1)),$(strip $(value $1)))
quote = '$(subst ','\'',$(value $1))'
arg = $(if $(call given,$2),$1 $(call quote,$2))
switch = $(if $(filter $3,$(call given,$2)),$1)
require = $(if $(call given,$1),,$(error $1 is required, e.g. $2))

TUNE_ARGS = $(call arg,--model,MODEL) $(call arg,--dataset,DATASET) $(call arg,--data,DATA) \
	$(call arg,--target,TARGET) $(call arg,--features,FEATURES) $(call arg,--task,TASK) $(call arg,--name,NAME) \
	$(call arg,--id,ID) $(call arg,--order,ORDER) $(call arg,--trials,TRIALS) $(call arg,--timeout,TIMEOUT) \
	$(call arg,--jobs,JOBS) $(call arg,--device,DEVICE) $(call arg,--storage,STORAGE) $(call arg,--seed,SEED) \
	$(call arg,--epochs,EPOCHS) $(call switch,--no-conclude,CONCLUDE,0) $(call switch,--no-progress,PROGRESS,0) \
	$(HEARTBEAT_ARGS)
HEARTBEAT_ARGS = $(call arg,--heartbeat,HEARTBEAT) $(call arg,--grace,GRACE)
TRUST_ARGS = $(call switch,--trust-unsigned,TRUST_UNSIGNED,1)
DASHBOARD_ARGS = $(call arg,--allowed-hosts,ALLOWED_HOSTS) $(call switch,--read-only,READ_ONLY,1)
OLDER_ARGS = $(call switch,--allow-older,ALLOW_OLDER,1)
# PYTEST_ARGS holds several arguments (`-k 'a or b' -x`): it reaches pytest as one PYTEST_ADDOPTS word, which
# pytest itself splits as a shell would, without running a shell on it.
PYTEST = $(if $(call given,PYTEST_ARGS),PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call quote,PYTEST_ARGS) )$(PYTHON) -m pytest
# The suite's modules run on TEST_WORKERS processes (pytest-xdist; 2 by default, the machine CI has), each module
# whole on one of them: a module's servers and fixtures are its own. TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS_ARGS = -n $(if $(call given,TEST_WORKERS),$(call quote,TEST_WORKERS),2) --dist loadfile

# $(call apt_install,why,Debian package,what,Homebrew formula,program): a shell command that installs the package
# with apt (as root, or with sudo that asks no password) or says what to install by hand, and fails.
apt_install = echo "$1; trying apt-get install $2 ..."; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	if command -v apt-get >/dev/null && { [ -z "$$SUDO" ] || sudo -n true 2>/dev/null; }; then \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $2 >/dev/null; \
	else \
		echo "Cannot install $3 here. Install it (Debian/Ubuntu: apt-get install $2; macOS: brew install $4)"; \
		echo "and put '$5' on PATH, then run make again."; exit 1; \
	fi

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
install: $(STAMP) java prometheus haproxy ## Make .venv with the pinned dependencies; check Java 17 (TorchServe), Prometheus (make monitor) and HAProxy (make serve REPLICAS=N)

.PHONY: java
java: ## Check for Java 17+ (TorchServe); install openjdk-17-jre-headless with apt when possible
	@java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || \
	{ $(call apt_install,TorchServe needs Java 17+,openjdk-17-jre-headless,a Java 17+ runtime,openjdk@17,java); }

.PHONY: test
test: install lint ## Run the whole test suite (installs what it needs) [TEST_WORKERS=2 PYTEST_ARGS=]
	$(PYTEST) $(TEST_WORKERS_ARGS)

.PHONY: test-fast
test-fast: $(STAMP) lint ## The fast part alone: every test without the e2e marker (no TorchServe, tracking server, UI, killed process or bench)
	$(PYTEST) $(TEST_WORKERS_ARGS) -m "not e2e"

.PHONY: lint
lint: $(STAMP) ## Lint and format check (ruff)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: tune
tune: $(STAMP) ## Tune: make tune MODEL=nw|mha|s2s|pixel DATASET=sine|diabetes|adding|digits|dates TRIALS=20 [TIMEOUT= JOBS= DEVICE= STORAGE= SEED= EPOCHS= CONCLUDE=0|1 HEARTBEAT= GRACE= PROGRESS=0], or on your file: DATA=file.csv|.parquet TARGET=col [FEATURES=a,b TASK= NAME= ID= ORDER=]
	$(PYTHON) -m training tune $(TUNE_ARGS)

.PHONY: conclude
conclude: $(STAMP) ## Refit a study's best trial, register it if new, @champion by validation: make conclude NAME=nw-sine [STORAGE= DATA=file it was tuned on]
	$(call require,NAME,make conclude NAME=nw-sine)
	$(PYTHON) -m training conclude $(call arg,--name,NAME) $(call arg,--device,DEVICE) $(call arg,--storage,STORAGE) $(call arg,--data,DATA) $(HEARTBEAT_ARGS)

.PHONY: tracking-server
tracking-server: $(STAMP) ## Local PostgreSQL + mlflow server for many workers: [PORT=5000 PG_PORT=5433 HOST=127.0.0.1 ALLOWED_HOSTS=]
	$(PYTHON) -m training tracking-server $(call arg,--host,HOST) $(call arg,--port,PORT) $(call arg,--pg-port,PG_PORT) $(call arg,--allowed-hosts,ALLOWED_HOSTS)

.PHONY: tracking-server-stop
tracking-server-stop: $(STAMP) ## Stop the tracking server started by make tracking-server (its data stays in .tracking/)
	$(PYTHON) -m training tracking-server-stop

.PHONY: archive
archive: $(STAMP) ## Build archives/<name>.mar from the registry's @champion, its test metric checked again: make archive [NAME=nw-sine] [EXPLAIN_KEYS=values|index|none] [DATA=file it was tuned on] [UNVERIFIED=1]
	$(PYTHON) -m training archive $(call arg,--name,NAME) $(call arg,--explain-keys,EXPLAIN_KEYS) $(call arg,--data,DATA) $(call switch,--unverified,UNVERIFIED,1)

.PHONY: score
score: $(STAMP) ## Score a file with the registry's @champion, no server: make score NAME=nw-wine DATA=file.csv|.parquet OUT=predictions.csv [BATCH_ROWS=]
	$(foreach v,NAME DATA OUT,$(call require,$v,make score NAME=nw-wine DATA=wine.csv OUT=predictions.csv))
	$(PYTHON) -m training score $(call arg,--name,NAME) $(call arg,--data,DATA) $(call arg,--out,OUT) $(call arg,--batch-rows,BATCH_ROWS)

.PHONY: serve
serve: install ## Start TorchServe in the background with every archive (each verified first), wait until healthy [REPLICAS=N: N servers behind HAProxy; HOSTS=addr,addr] [TRUST_UNSIGNED=1 ALLOW_OLDER=1]
	$(PYTHON) -m training serve $(call arg,--replicas,REPLICAS) $(call arg,--hosts,HOSTS) $(TRUST_ARGS) $(OLDER_ARGS)

.PHONY: deploy
deploy: $(STAMP) ## Roll the newly archived champion into the running server, no request dropped: make deploy NAME=nw-sine [ALLOW_OLDER=1]
	$(call require,NAME,make deploy NAME=nw-sine)
	$(PYTHON) -m training deploy $(call arg,--name,NAME) $(TRUST_ARGS) $(OLDER_ARGS)

.PHONY: rollback
rollback: $(STAMP) ## Return the running server to the version served before the last rollout, no request dropped: make rollback NAME=nw-sine
	$(call require,NAME,make rollback NAME=nw-sine)
	$(PYTHON) -m training rollback $(call arg,--name,NAME) $(TRUST_ARGS)

.PHONY: canary
canary: $(STAMP) ## A fleet: send PERCENT of a model's traffic to its new archive, gated on Prometheus (make monitor): make canary NAME=nw-sine PERCENT=10
	$(foreach v,NAME PERCENT,$(call require,$v,make canary NAME=nw-sine PERCENT=10))
	$(PYTHON) -m training canary $(call arg,--name,NAME) $(call arg,--percent,PERCENT) $(TRUST_ARGS) $(OLDER_ARGS)

.PHONY: promote
promote: $(STAMP) ## A fleet: roll the canary's version into every replica, one at a time: make promote NAME=nw-sine
	$(call require,NAME,make promote NAME=nw-sine)
	$(PYTHON) -m training promote $(call arg,--name,NAME) $(TRUST_ARGS)

.PHONY: abort
abort: $(STAMP) ## A fleet: every request back to the serving version at once, the canary unregistered: make abort NAME=nw-sine
	$(call require,NAME,make abort NAME=nw-sine)
	$(PYTHON) -m training abort $(call arg,--name,NAME)

.PHONY: stop
stop: $(STAMP) ## Stop TorchServe, or the whole fleet (returns when every server process tree is gone)
	$(PYTHON) -m training stop

.PHONY: status
status: $(STAMP) ## The running server's or fleet's health, versions served and load (each replica's, at the balancer)
	$(PYTHON) -m training status

.PHONY: prometheus
prometheus: ## Check for Prometheus (make monitor); install Debian's prometheus package with apt when possible
	@command -v prometheus >/dev/null || { $(call apt_install,make monitor needs Prometheus,prometheus,Prometheus,prometheus,prometheus); }

.PHONY: haproxy
haproxy: ## Check for HAProxy (make serve REPLICAS=N); install Debian's haproxy package with apt when possible
	@command -v haproxy >/dev/null || { $(call apt_install,make serve REPLICAS=N needs HAProxy,haproxy,HAProxy,haproxy,haproxy); }

.PHONY: monitor
monitor: $(STAMP) prometheus ## Prometheus on http://127.0.0.1:9090 scraping the running TorchServe, with alert rules: make monitor [PORT=9090 INTERVAL=15s]
	$(PYTHON) -m training monitor $(call arg,--port,PORT) $(call arg,--interval,INTERVAL)

.PHONY: monitor-stop
monitor-stop: $(STAMP) ## Stop the Prometheus started by make monitor (its series stay in .monitor/)
	$(PYTHON) -m training monitor-stop

.PHONY: ui
ui: $(STAMP) ## MLflow UI on http://127.0.0.1:5000 over mlruns/: make ui [PORT=5000] (with an http MLFLOW_TRACKING_URI: prints that server's URL)
	$(PYTHON) -m training ui $(call arg,--port,PORT)

.PHONY: dashboard
dashboard: $(STAMP) ## optuna-dashboard on http://127.0.0.1:8083 over the Optuna storage: make dashboard [PORT=8083 STORAGE= ALLOWED_HOSTS= READ_ONLY=1]
	$(PYTHON) -m training dashboard $(call arg,--port,PORT) $(call arg,--storage,STORAGE) $(DASHBOARD_ARGS)

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
