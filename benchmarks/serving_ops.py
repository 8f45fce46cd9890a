"""Rows 6, 7 and 8: the batching delay that serves both low and high load, a soak at concurrency 64, and what the
handler's metrics cost.

Row 6 measures `maxBatchDelay` 0/1/2/5 ms on nw-sine at concurrency 1 and 64 and names the delay that keeps
c64 throughput within 90% of the best while c1's median latency stays at or under 2 ms. Row 7 holds
concurrency 64 for 60 s against the shipped configuration and counts every non-200 answer. Row 8 serves each
model twice, handler metrics on (as shipped) and off, and loads them at concurrency 64 in turn, on and off
interleaved, 5 runs each: the metrics must keep at least 0.93x of the throughput without them (median of the runs).
"""

from __future__ import annotations

import json

from benchmarks.load import interleaved, load_of, median_run, run_load
from benchmarks.markdown import table, verdict
from benchmarks.serving import PAYLOADS, default_variants, served
from training.serving.archive import MODEL_CONFIG

DELAYS_MS, QUICK_DELAYS_MS = [0, 1, 2, 5], [0, 5]
SOAK_SECONDS, SOAK_CONCURRENCY = 60, 64
METRICS_SWITCH = {"": True, "-no-metrics": False}  # archive suffix -> handler metrics on?
METRICS_MIN_RATIO = 0.93


def delay_variants(delays: list[int]) -> dict[str, dict]:
    return {f"-d{d}": {"maxBatchDelay": d} for d in delays}


def metrics_variants() -> dict[str, dict]:
    return {suffix: {"handler_options": {"metrics": on}} for suffix, on in METRICS_SWITCH.items()}


def quick_variants() -> dict[str, dict]:
    """What these rows serve in a quick run (beside row 3's variants, on the same server)."""
    return delay_variants(QUICK_DELAYS_MS) | {"-no-metrics": metrics_variants()["-no-metrics"]}


def run_delays(quick: bool = False, client: str = "auto") -> list[dict]:
    delays = QUICK_DELAYS_MS if quick else DELAYS_MS
    seconds, repeats, warmup = (0.5, 1, 0.3) if quick else (3.0, 3, 1.0)
    rows = []
    with served(quick, delay_variants(delays)) as server:
        for name, payload in PAYLOADS.items():
            body = json.dumps(payload).encode()
            for concurrency in (1, 64):
                for delay in delays:
                    url = f"{server.inference_url}/predictions/{name}-d{delay}"
                    run_load(url, body, server.token(), concurrency, warmup, client)  # warm-up
                    runs = [run_load(url, body, server.token(), concurrency, seconds, client) for _ in range(repeats)]
                    median = median_run(runs)
                    rows.append({"model": name, "delay_ms": delay, "concurrency": concurrency, **median})
    return rows


def qualifying_delays(rows: list[dict], model: str) -> list[int]:
    """Delays with c64 throughput >= 0.9x the best delay's and c1 median latency <= 2 ms."""
    cells = {(r["delay_ms"], r["concurrency"]): r for r in rows if r["model"] == model}
    best = max(r["rps"] for (_, c), r in cells.items() if c == 64)
    delays = sorted({d for d, _ in cells})
    return [d for d in delays if cells[(d, 64)]["rps"] >= 0.9 * best and cells[(d, 1)]["p50_ms"] <= 2]


def run_soak(quick: bool = False, client: str = "auto") -> list[dict]:
    seconds = 2.0 if quick else SOAK_SECONDS
    rows = []
    with served(quick, {"": default_variants()[""]}) as server:
        for name, payload in PAYLOADS.items():
            url = f"{server.inference_url}/predictions/{name}"
            result = run_load(url, json.dumps(payload).encode(), server.token(), SOAK_CONCURRENCY, seconds, client)
            pids = [w["pid"] for w in server.workers(name)]
            rows.append({"model": name, "seconds": seconds, "concurrency": SOAK_CONCURRENCY, **result, "pids": pids})
    return rows


def run_metrics_cost(quick: bool = False, client: str = "auto") -> list[dict]:
    seconds, repeats, warmup = (0.5, 1, 0.3) if quick else (3.0, 5, 1.0)
    rows = []
    with served(quick, metrics_variants()) as server:
        for name, payload in PAYLOADS.items():
            body = json.dumps(payload).encode()
            urls = {s: f"{server.inference_url}/predictions/{name}{s}" for s in METRICS_SWITCH}
            loads = {s: load_of(url, body, server.token, SOAK_CONCURRENCY, client) for s, url in urls.items()}
            runs = interleaved(loads, repeats, seconds, warmup)  # on, off, on, off, ...: drifts fall on both
            for suffix, on in METRICS_SWITCH.items():
                median = median_run(runs[suffix])
                every = [r["rps"] for r in runs[suffix]]
                rows.append({"model": name, "metrics": on, "concurrency": SOAK_CONCURRENCY, **median, "runs": every})
    return rows


def metrics_ratio(rows: list[dict], model: str) -> float:
    """Median throughput with the handler's metrics over without them."""
    on = next(r["rps"] for r in rows if r["model"] == model and r["metrics"])
    off = next(r["rps"] for r in rows if r["model"] == model and not r["metrics"])
    return on / off


def delay_section(rows: list[dict]) -> str:
    shipped = MODEL_CONFIG["maxBatchDelay"]
    out = [
        "## 6. Batching delay: low-load latency vs high-load throughput",
        "",
        "`maxBatchDelay` is how long TorchServe waits for a batch to fill; a lone request waits all of it, so c1 "
        "latency is the delay plus the unbatched answer time (row 3). 0 ms in `model-config.yaml` is read as unset "
        "(TorchServe's default, 100 ms); 0 through the registration API makes batches of at most two requests "
        "(c64 throughput fell to a quarter when tried). TorchServe's `asyncCommunication` mode with `batchSize` 1 and "
        "the worker taking every queued request at once was tried too (c1 p50 0.8 ms for nw-sine): its frontend "
        "lost the model at c64 (an unsynchronized job map), left in-flight requests unanswered after a worker "
        "kill and ignored `responseTimeout`, so it is not a variant here. Each cell: the median of the runs.",
        "",
        table(
            ["model", "maxBatchDelay ms", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"],
            [
                [r["model"], r["delay_ms"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]]
                for r in rows
            ],
        ),
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        fits = qualifying_delays(rows, model)
        out += [
            "",
            f"`{model}`: delays meeting both targets (c64 ≥ 0.9× the best delay's throughput, c1 p50 ≤ 2 ms): "
            f"{', '.join(f'{d} ms' for d in fits) or 'none'}; shipped default {shipped} ms {verdict(shipped in fits)}.",
        ]
    return "\n".join(out)


def soak_section(rows: list[dict]) -> str:
    errors = sum(r["errors"] for r in rows)
    return "\n".join(
        [
            f"## 7. Soak: concurrency {SOAK_CONCURRENCY} for {rows[0]['seconds']:.0f} s per model",
            "",
            table(
                ["model", "requests", "req/s", "p50 ms", "p99 ms", "errors"],
                [[r["model"], r["requests"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]] for r in rows],
            ),
            "",
            f"Target: 0 errors — {errors} {verdict(errors == 0)}.",
        ]
    )


def metrics_section(rows: list[dict]) -> str:
    out = [
        "## 8. What the handler's metrics cost",
        "",
        f"Each model served twice, handler metrics on (shipped) and off (`metrics: false`), loaded at concurrency "
        f"{SOAK_CONCURRENCY} in turn, on and off interleaved; each cell is the median of the runs (all runs' req/s "
        "listed). Target: on ≥ 0.93× off.",
        "",
        table(
            ["model", "metrics", "req/s", "p50 ms", "p99 ms", "errors", "runs (req/s)"],
            [
                [
                    r["model"],
                    "on" if r["metrics"] else "off",
                    r["rps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    " ".join(f"{v:.0f}" for v in r["runs"]),
                ]
                for r in rows
            ],
        ),
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        ratio = metrics_ratio(rows, model)
        out.append(f"`{model}`: on / off = {ratio:.2f}× {verdict(ratio >= METRICS_MIN_RATIO)}")
    return "\n".join(out)
