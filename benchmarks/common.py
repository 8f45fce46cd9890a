"""Timing, peak memory and machine facts shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_median_seconds(
    first: Callable[[], object], second: Callable[[], object], rounds: int = 15, calls: int = 3, warmup: int = 3
) -> tuple[float, float]:
    """Median per-call time of two functions measured in alternating rounds, so drifts in machine load
    (other processes, frequency changes) hit both alike."""
    for _ in range(warmup):
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            bucket.append((time.perf_counter() - start) / calls)
    return statistics.median(times[0]), statistics.median(times[1])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_rss() -> int:
    """Reset this process's peak resident memory (Linux: clear_refs 5) and return the resident bytes now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident memory since the last reset (or since start)."""
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_isolated(module: str, args: list[str]) -> dict:
    """Run `python -m module args` in a fresh process (clean peak-memory reading); it prints one JSON line."""
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def provenance() -> dict[str, str]:
    """Which code a row was measured on: the commit (marked `+changes` when tracked files differ from it) and when."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    return {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def machine() -> dict[str, object]:
    from training.tracking.mlflow_store import package_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "versions": package_versions(),
    }
