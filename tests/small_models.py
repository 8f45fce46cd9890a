"""A small NW model on `sine` beside a fresh local MLflow store: what the registry tests log and register."""

from pathlib import Path

import torch

from training.data.datasets import load_dataset
from training.nn import NWConfig, build_model
from training.tracking import mlflow_store


def small_nw(root: Path):
    """(tracking URI, its configured client, the `sine` data, an NW model keyed by 20 training rows in eval mode)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow_store.configure(uri)
    data = load_dataset("sine")
    torch.manual_seed(0)
    model = build_model("nw", NWConfig(in_features=1, n_keys=20, bandwidth=2.0))
    model.set_memory(data.train.x[:20], data.train.y[:20])
    model.eval()
    return uri, client, data, model
