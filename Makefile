# Every target sets up .venv on first use, so a fresh clone needs nothing but Python 3.11.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRACKING_URI ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///mlflow.db)
# `make server`'s PostgreSQL and artifacts; BACKEND_URI (a team's PostgreSQL) and STORAGE
# (`make dashboard`) reach the commands through the environment, so that their passwords
# are neither echoed by make nor shown by `ps`.
STORE_DIR ?= .mlflow-server
export BACKEND_URI STORAGE

.PHONY: install train rank-study figures test test-fast lint format ui server dashboard bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml; pip takes them from local disk here.
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install transferlab (editable) with its dev tools

train: $(STAMP)  ## the embedded default study: source -> target transfer vs scratch, offline
	$(VENV)/bin/transferlab-train -cn digits_transfer $(ARGS)

figures: $(STAMP)  ## the README's figures (docs/) from fresh runs of the shipped studies, ~45 min
	$(PY) -m experiments.make_figures $(STUDIES)

test: $(STAMP)  ## the whole suite (real training, real MLflow stores in temp dirs)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## everything but the subprocess runs
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

ui: $(STAMP)  ## the MLflow UI on 127.0.0.1 over the store `make train` writes
	$(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port $(or $(PORT),5000)

server: $(STAMP)  ## a team's store: mlflow server on 127.0.0.1 over PostgreSQL (BACKEND_URI: a team's)
	$(PY) -m transferlab.server server --port $(or $(PORT),5000) --store-dir $(STORE_DIR)

dashboard: $(STAMP)  ## optuna-dashboard on 127.0.0.1 over STORAGE (an Optuna storage URL)
	$(PY) -m transferlab.server dashboard --port $(or $(PORT),8080)

rank-study: $(STAMP)  ## trains 5 source networks, ranks them for digits 5-9, checks by fine-tuning
	$(PY) -m experiments.rank_digits_sources

bench: $(STAMP)  ## transferlab vs plain PyTorch, measured here; writes bench/results/latest.json
	cd bench && ../$(PY) run.py

clean:  ## run outputs (keeps .venv and the MLflow store)
	rm -rf outputs multirun lightning_logs .pytest_cache
