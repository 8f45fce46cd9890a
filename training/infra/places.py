"""Where things live in a checkout, and the default loopback ports: declared once, used everywhere."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: training/, handlers/, archives/, mlruns/
MLRUNS = ROOT / "mlruns"  # the local MLflow store (SQLite + artifacts) and the default Optuna storage
ARCHIVES = ROOT / "archives"  # built .mar files: TorchServe's model store
SERVE_DIR = ROOT / ".serve"  # a running TorchServe's config, tokens, logs and temp files (0700)
MONITOR_DIR = ROOT / ".monitor"  # `make monitor`'s Prometheus: configuration, scrape token, series, log (0700)
TRACKING_DIR = ROOT / ".tracking"  # the multi-worker tracking server's PostgreSQL data and state
TORCHSERVE_CONFIG = ROOT / "config.properties"
HANDLER = ROOT / "handlers" / "attention_handler.py"

LOOPBACK = "127.0.0.1"
MLFLOW_PORT = 5000  # `make ui` and `make tracking-server`
POSTGRES_PORT = 5433  # `make tracking-server`'s PostgreSQL (5432 is often a system one)
DASHBOARD_PORT = 8083  # `make dashboard`
PROMETHEUS_PORT = 9090  # `make monitor`


def default_optuna_storage() -> str:
    return f"sqlite:///{MLRUNS / 'optuna.db'}"
