"""Row 13: a large tune with glibc's own allocator thresholds against the kept ones (training/infra/memory.py).

`python -m training tune --model nw --data <file> --trials 2` (the search's first trials, then the conclusion's
refit and registration) on make_friedman1 files of 300,000 and 1,000,000 rows, in fresh stores, once with
`ATTENTION_SERVE_MALLOC=system` (before) and once as shipped (after), interleaved. Per run: wall seconds, user
and system CPU seconds, minor page faults and peak resident memory of the tune's process tree (rusage of the
children), and the registered champion's test R² (the same model either way).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from benchmarks.common import ROOT
from benchmarks.large_nw import write_file
from benchmarks.markdown import table, verdict
from training.infra.memory import OPT_OUT

SIZES, QUICK_SIZES, QUICK_EPOCHS = (300_000, 1_000_000), (2_000,), 2
MODES = {"before": "system", "after": ""}  # ATTENTION_SERVE_MALLOC for each
SPEEDUP = 1.2  # target: the kept thresholds at least this much faster at 300k rows


def one_tune(data: Path, mode: str, folder: Path, epochs: int | None = None) -> dict:
    stores = folder / f"stores-{mode}-{data.stem}"
    stores.mkdir()
    command = [sys.executable, "-m", "training", "tune", "--model", "nw", "--data", str(data), "--target", "y"]
    command += ["--trials", "2", "--no-progress", "--storage", f"sqlite:///{stores / 'optuna.db'}"]
    command += ["--tracking-uri", f"sqlite:///{stores / 'mlflow.db'}"]
    command += ["--epochs", str(epochs), "--no-conclude"] if epochs else []  # a smoke run: the trials alone
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT and not k.startswith("MALLOC_")}
    env |= {OPT_OUT: MODES[mode]} if MODES[mode] else {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} tune failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return {
        "rows": int(data.stem.rsplit("-", 1)[1]),
        "mode": mode,
        "wall_s": round(wall, 1),
        "user_s": round(after.ru_utime - before.ru_utime, 1),
        "system_s": round(after.ru_stime - before.ru_stime, 1),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_gib": round(after.ru_maxrss / 2**20, 2),  # the largest child so far (kB): the tune itself
        "test_r2": champion_r2(stores / "mlflow.db"),  # None without a conclusion (a quick run)
    }


def champion_r2(database: Path) -> float | None:
    uri = f"sqlite:///{database}"
    client = MlflowClient(uri, uri)
    for model in client.search_registered_models():
        tags = client.get_model_version_by_alias(model.name, "champion").tags
        return round(float(tags["test_r2"]), 4) if "test_r2" in tags else None
    return None


def run(quick: bool) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-allocator-") as tmp:
        folder = Path(tmp)
        for rows in QUICK_SIZES if quick else SIZES:
            data = write_file(rows, folder)
            for mode in MODES:  # before, then after, per size: the two share the machine's state
                results.append(one_tune(data, mode, folder, QUICK_EPOCHS if quick else None))
    return results


def section(rows: list[dict]) -> str:
    out = [
        "## 13. Allocator: a large tune with glibc's thresholds against the kept ones",
        "",
        "`python -m training tune --model nw --data <make_friedman1 file> --target y --trials 2` in fresh stores "
        "(two trials, the refit and the registration), before (`ATTENTION_SERVE_MALLOC=system`: glibc's "
        "defaults) and after (the thresholds `training/infra/memory.py` sets), one after the other per size. CPU "
        "seconds, minor faults and peak memory of the tune's process tree.",
        "",
        table(
            ["rows", "allocator", "wall s", "user s", "system s", "minor faults", "peak RSS GiB", "test R²"],
            [
                [
                    r["rows"],
                    r["mode"],
                    r["wall_s"],
                    r["user_s"],
                    r["system_s"],
                    f"{r['minor_faults']:,}",
                    r["peak_rss_gib"],
                    r["test_r2"],
                ]
                for r in rows
            ],
        ),
        "",
    ]
    by = {(r["rows"], r["mode"]): r for r in rows}
    for size in sorted({r["rows"] for r in rows}):
        if (size, "before") in by and (size, "after") in by:
            speedup = by[size, "before"]["wall_s"] / max(by[size, "after"]["wall_s"], 1e-9)
            out.append(f"- {size:,} rows: {speedup:.2f}x the speed {verdict(speedup >= SPEEDUP)} (target ≥ {SPEEDUP}x)")
    return "\n".join(out)
