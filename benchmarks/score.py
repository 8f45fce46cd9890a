"""Row 9: scoring a file without the server (`make score`).

An NW champion tuned briefly on a 10,000-row file of scikit-learn's Friedman #1 (8 features, the last 3
pure noise) scores 1,000,000 fresh rows of the same generator written to a CSV: the whole command's work
(download the champion, read and check the file in chunks, predict, write the predictions' CSV).
Target: ≤ 60 s. The CPU seconds (all threads) and the load average before say how much of the machine
the scoring had: on a shared machine they fall short of cores × seconds. Peak memory is measured over the
scoring alone: it stays bounded by the chunk size, not the file's. The MSE against the file's noise-free
targets says the predictions are the model's, not noise.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_friedman1

from benchmarks.common import peak_rss_bytes, reset_peak_rss
from benchmarks.markdown import table, verdict
from training.nn import load_checkpoint
from training.search.options import TuneOptions
from training.search.study import tune
from training.serving.score import BATCH_ROWS, score_file
from training.tracking import mlflow_store, registry

TARGET_SECONDS = 60.0
FEATURES = 8


def friedman_file(path: Path, rows: int, seed: int, noise: float) -> Path:
    x, y = make_friedman1(n_samples=rows, n_features=FEATURES, noise=noise, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(FEATURES)]).assign(y=y)
    frame.to_csv(path, index=False)
    return path


def run(quick: bool = False) -> list[dict]:
    tune_rows, score_rows, trials = (300, 20_000, 1) if quick else (10_000, 1_000_000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "storage": f"sqlite:///{root / 'optuna.db'}"}
        train = friedman_file(root / "friedman.csv", tune_rows, seed=0, noise=1.0)
        start = time.perf_counter()
        brief = {"trials": trials, "epochs": 2 if quick else 3, "timeout": 120, "progress": False, **stores}
        tune(TuneOptions(model="nw", data=str(train), target="y", study_name="nw-friedman", **brief))
        tune_seconds = time.perf_counter() - start
        data = friedman_file(root / "score.csv", score_rows, seed=1, noise=0.0)
        reset_peak_rss()
        load, cpu = os.getloadavg()[0], time.process_time()
        scored = score_file("nw-friedman", data, root / "predictions.csv", stores["tracking_uri"])
        peak, cpu = peak_rss_bytes(), time.process_time() - cpu
        predictions = pd.read_csv(root / "predictions.csv")["prediction"].to_numpy()
        truth = pd.read_csv(data, usecols=["y"])["y"].to_numpy()
        return [
            {
                "rows": scored.rows,
                "features": FEATURES,
                "keys": keys_of(stores["tracking_uri"]),
                "tune_rows": tune_rows,
                "tune_seconds": tune_seconds,
                "file_mib": data.stat().st_size / 2**20,
                "batch_rows": BATCH_ROWS,
                "seconds": scored.seconds,
                "rows_per_s": scored.rows / scored.seconds,
                "cpu_seconds": cpu,  # all threads: near cores x seconds on a machine of its own, less when shared
                "load_before": load,
                "peak_rss_mib": peak / 2**20,
                "mse": float(np.mean((predictions - truth) ** 2)),
                "target_seconds": TARGET_SECONDS,
            }
        ]


def keys_of(tracking_uri: str) -> int:
    """The champion's number of keys (training rows it attends over): the cost per scored row."""
    client = mlflow_store.configure(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        _, checkpoint = registry.download_champion(client, "nw-friedman", Path(tmp))
        return load_checkpoint(checkpoint)[0].config.n_keys


def section(rows: list[dict]) -> str:
    r = rows[0]
    met = r["seconds"] <= r["target_seconds"]
    return "\n".join(
        [
            "## 11. Scoring a file without the server (`make score`)",
            "",
            f"An NW champion tuned briefly ({r['tune_seconds']:.0f} s) on a {r['tune_rows']:,}-row Friedman #1 file "
            f"({r['features']} features) scores {r['rows']:,} fresh rows of the same generator from a CSV: download, "
            f"chunks of {r['batch_rows']:,} rows read and checked, predicted, written. Peak memory: the scoring alone; "
            "CPU s: all threads (near cores × seconds on a machine of its own, less on a shared one).",
            "",
            table(
                ["rows", "keys", "CSV MiB", "seconds", "rows/s", "CPU s", "load before", "peak RSS MiB", "MSE vs y"],
                [
                    [r["rows"], r["keys"], r["file_mib"], r["seconds"], r["rows_per_s"]]
                    + [r.get("cpu_seconds"), r.get("load_before"), r["peak_rss_mib"], r["mse"]]
                ],
            ),
            "",
            f"Target: ≤ {r['target_seconds']:.0f} s — {r['seconds']:.1f} s {verdict(met)}.",
        ]
    )
