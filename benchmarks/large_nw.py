"""Row 9: Nadaraya-Watson at data scale, with M prototypes of the training rows (training/nn/prototypes.py).

Files made with scikit-learn's `make_friedman1` (8 features, noise 1), 10k, 100k and 1M rows, written to CSV and
loaded as a user's file is (`make tune DATA=...`). At each size and memory M, one parametric trial with fixed
settings (per-feature bandwidths, a linear trend, AdamW; the search's epochs for that size): seconds for the
prototypes (k-means), per epoch and for the whole trial, peak memory, test R², the checkpoint's size and the
in-process handler's c1 median latency for one instance. At 10k the all-rows model runs with the same settings
(the prototypes' test MSE against it). Peers on the same split: k-NN regression and HistGradientBoosting,
selected by 5-fold CV on train+validation as in row 5, on a 100k subsample where the data is larger.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.datasets import make_friedman1
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import r2_score
from sklearn.neighbors import KNeighborsRegressor

from benchmarks.common import peak_rss_bytes, reset_peak_rss
from benchmarks.markdown import table, verdict
from benchmarks.quality import select_by_cv
from handlers.contract import Limits, adapter_for, answer_batch
from training.data.datasets import prepare_model
from training.data.tables import TableSpec, load_file_dataset
from training.fit.loop import evaluate, fit
from training.nn import build_model, save_checkpoint
from training.search.space import FILE_EPOCHS, FIRST_PROTOTYPE_TRIAL, SECONDS_PER_ROW_PROTOTYPE, rebuild

SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (1_000, 2_000)
QUICK_EPOCHS, QUICK_REPEATS = 2, 20  # a smoke run: every step once, nothing measured
MEMORIES = {10_000: (256, 1024, 4096, "all"), 100_000: (256, 1024, 4096), 1_000_000: (256, 1024, 4096)}
FIRST_M = FIRST_PROTOTYPE_TRIAL["memory"]
TRIAL_SECONDS = {100_000: 20, 1_000_000: 120}  # a trial at the search's first M
LARGEST_SECONDS, MEMORY_GIB, ARCHIVE_MB = 600, 4, 50
SETTINGS = {**FIRST_PROTOTYPE_TRIAL, "batch_size": 256}  # the search's first trial; batch 256 for the all-rows model
PEER_ROWS = 100_000
PEERS = {
    "KNeighborsRegressor": (KNeighborsRegressor, {"n_neighbors": [5, 10, 20, 40], "weights": ["distance"]}),
    "HistGradientBoostingRegressor": (
        lambda **p: HistGradientBoostingRegressor(random_state=0, **p),
        {"learning_rate": [0.05, 0.1], "max_iter": [300], "max_leaf_nodes": [15, 31]},
    ),
}


def write_file(rows: int, folder: Path) -> Path:
    x, y = make_friedman1(n_samples=rows, n_features=8, noise=1.0, random_state=0)
    path = folder / f"friedman1-{rows}.csv"
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)]).assign(y=y)
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def handler_p50_ms(model, repeats: int = 200) -> float:
    limits = Limits()
    adapter = adapter_for(model, limits)
    body = json.dumps({"instances": [[0.5] * 8]}).encode()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer_batch([body], [False], adapter, limits, {"name": "bench"})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def one_trial(data, memory, folder: Path, epochs: int = FILE_EPOCHS, repeats: int = 200) -> dict:
    setup = rebuild("nw", {**SETTINGS, "memory": memory}, data, epochs=epochs, seed=0, device="cpu")
    reset_peak_rss()
    start = time.perf_counter()
    model = prepare_model(build_model("nw", setup.model_config), data)
    init_seconds = time.perf_counter() - start
    result = fit(model, data, setup.fit_config)
    trial_seconds = time.perf_counter() - start
    test = evaluate(model, data.test, data.task)
    checkpoint = folder / "checkpoint.pt"
    save_checkpoint(model.cpu().eval(), checkpoint)
    epochs = max(1, len(result.history))
    return {
        "memory": memory,
        "keys": model.config.n_keys,
        "epochs": len(result.history),
        "init_s": round(init_seconds, 2),
        "epoch_s": round((result.seconds) / epochs, 2),
        "trial_s": round(trial_seconds, 3),  # ms: a quick trial must not read 0.0
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
        "test_mse": test["mse"],
        "test_r2": test["r2"],
        "checkpoint_mb": round(checkpoint.stat().st_size / 2**20, 2),
        "c1_p50_ms": round(handler_p50_ms(model.eval(), repeats), 3),
    }


def peers(data, quick: bool) -> dict[str, float]:
    def arrays(split, limit=None):
        x, y = split.x.numpy(), split.y.numpy()
        return (x[:limit], y[:limit]) if limit else (x, y)

    limit = 2_000 if quick else PEER_ROWS  # a subsample where the data is larger (the splits are shuffled)
    splits = (arrays(data.train, limit), arrays(data.val, limit // 4), arrays(data.test))
    grids = {name: {k: v[:1] for k, v in grid.items()} if quick else grid for name, (_, grid) in PEERS.items()}
    if quick:  # a smoke run: the booster's 300 rounds would be most of the row
        grids["HistGradientBoostingRegressor"]["max_iter"] = [20]
    return {
        name: select_by_cv(make, grids[name], splits, r2_score, maximize=True)[0] for name, (make, _) in PEERS.items()
    }


def run(quick: bool = False) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in QUICK_SIZES if quick else SIZES:
            path = write_file(size, Path(tmp))
            start = time.perf_counter()
            data = load_file_dataset(TableSpec(path=str(path), target="y"), seed=0)
            load_seconds = round(time.perf_counter() - start, 1)
            memories = (256, "all") if quick else MEMORIES[size]
            epochs = QUICK_EPOCHS if quick else FILE_EPOCHS
            repeats = QUICK_REPEATS if quick else 200
            trials = [one_trial(data, m, Path(tmp), epochs, repeats) for m in memories]
            rows.append(
                {"rows": size, "train_rows": len(data.train), "load_s": load_seconds, "trials": trials}
                | {"peers_r2": peers(data, quick)}
            )
    return rows


def all_rows_mse_ratio(row: dict, memory: int = 1024) -> float | None:
    """The prototypes' test MSE over the all-rows model's, at the size where both ran."""
    by_memory = {t["memory"]: t["test_mse"] for t in row["trials"]}
    return by_memory[memory] / by_memory["all"] if memory in by_memory and "all" in by_memory else None


def section(rows: list[dict]) -> str:
    out = [
        "## 9. Nadaraya-Watson at data scale (prototypes)",
        "",
        "`make_friedman1` files (8 features) loaded as a user's file; one parametric trial per memory M with fixed "
        "settings (per-feature bandwidths, linear trend, AdamW, batch 2,048; the search's epochs for the size). "
        "c1 p50: the handler in process for one instance (TorchServe's frontend adds its own constant, row 3).",
        "",
    ]
    table_rows = []
    for row in rows:
        for t in row["trials"]:
            table_rows.append(
                [
                    row["rows"],
                    t["memory"],
                    t["keys"],
                    t["epochs"],
                    t["init_s"],
                    t["epoch_s"],
                    round(t["trial_s"], 1),
                    t["peak_rss_gib"],
                    t["test_r2"],
                    t["checkpoint_mb"],
                    t["c1_p50_ms"],
                ]
            )
    headers = [
        "rows",
        "M",
        "keys",
        "epochs",
        "k-means s",
        "s/epoch",
        "trial s",
        "peak GiB",
        "test R²",
        "MB",
        "c1 p50 ms",
    ]
    out.append(table(headers, table_rows))
    out.append("")
    for row in rows:
        best = max(row["trials"], key=lambda t: t["test_r2"])
        peers = ", ".join(f"{name} {value:.3f}" for name, value in row["peers_r2"].items())
        out.append(
            f"- {row['rows']:,} rows (load {row['load_s']} s): best test R² {best['test_r2']:.3f} "
            f"(M {best['memory']}); peers {peers}"
        )
        ratio = all_rows_mse_ratio(row)
        if ratio is not None:
            out.append(f"  - M 1,024 against every row: test MSE ratio {ratio:.3f} {verdict(ratio <= 1.02)}")
    out += targets(rows)
    out += [
        "",
        "Cost model: the prototypes cost one k-means (Lloyd's iterations on at most 65,536 sampled rows, then one "
        "assignment pass: O(N M D)); an epoch costs O(N M D) (a batch x M score matrix per step, never batch x M x "
        "D); memory is O(batch x M + N D); serving costs O(M D) per query whatever N is, and the archive holds M "
        "prototypes (M x D keys, M values, M counts, 5 row numbers each).",
    ]
    per_unit = [
        t["epoch_s"] / (row["train_rows"] * t["keys"]) for row in rows for t in row["trials"] if t["memory"] != "all"
    ]
    if per_unit and all("train_rows" in row for row in rows):
        out.append(
            f"Measured: an epoch took {min(per_unit):.2g}-{max(per_unit):.2g} s per training row and prototype "
            f"(`make tune` estimates a trial with {SECONDS_PER_ROW_PROTOTYPE:.0e})."
        )
    return "\n".join(out)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets at 100k and 1M rows, for the search's first trial (M `FIRST_M`) and the largest M."""
    trial = {(row["rows"], t["memory"]): t for row in rows for t in row["trials"]}
    by_size = {row["rows"]: row for row in rows}
    if not {10_000, 100_000, 1_000_000} <= set(by_size):
        return []
    out = ["", f"Targets (M {FIRST_M:,}: the search's first trial on a large file, `FIRST_PROTOTYPE_TRIAL`):"]
    for size, limit in TRIAL_SECONDS.items():
        seconds = trial[size, FIRST_M]["trial_s"]
        out.append(f"- a trial at {size:,} rows ≤ {limit} s: {seconds:.1f} s {verdict(seconds <= limit)}")
    largest = max((t for t in by_size[1_000_000]["trials"] if t["memory"] != "all"), key=lambda t: t["keys"])
    out.append(
        f"- the largest M ({largest['memory']:,}) at 1,000,000 rows under {LARGEST_SECONDS // 60} min: "
        f"{largest['trial_s']:.1f} s {verdict(largest['trial_s'] < LARGEST_SECONDS)}"
    )
    peak = max(t["peak_rss_gib"] for t in trial.values())
    out.append(f"- memory ≤ {MEMORY_GIB} GiB: peak {peak} GiB {verdict(peak <= MEMORY_GIB)}")
    ratio = trial[1_000_000, FIRST_M]["c1_p50_ms"] / trial[10_000, FIRST_M]["c1_p50_ms"]
    out.append(f"- served c1 p50 at 1M rows within 1.5x the 10k-row model's: {ratio:.2f}x {verdict(ratio <= 1.5)}")
    size_mb = max(t["checkpoint_mb"] for t in trial.values())
    out.append(f"- archive ≤ {ARCHIVE_MB} MB: largest checkpoint {size_mb} MB {verdict(size_mb <= ARCHIVE_MB)}")
    for size in TRIAL_SECONDS:
        r2, peers_r2 = trial[size, FIRST_M]["test_r2"], by_size[size]["peers_r2"]
        knn, hgb = peers_r2["KNeighborsRegressor"], peers_r2["HistGradientBoostingRegressor"]
        ok = r2 > knn and r2 >= 0.9 * hgb
        out.append(
            f"- test R² at {size:,} rows ahead of k-NN ({knn:.3f}) and ≥ 0.9x HistGradientBoosting ({hgb:.3f}): "
            f"{r2:.3f} {verdict(ok)}"
        )
    return out
