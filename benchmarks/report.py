"""benchmarks/results.md from the results dict: one table per row, each with its target and verdict."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bookkeeping import TARGET_RATIO as BOOKKEEPING_TARGET
from benchmarks.large_nw import all_rows_mse_ratio
from benchmarks.samplers import default_holds
from benchmarks.serving_ops import METRICS_MIN_RATIO, SOAK_CONCURRENCY, metrics_ratio, qualifying_delays
from training.serving.archive import MODEL_CONFIG


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def nw_section(rows: list[dict]) -> str:
    out = [
        "## 1. Nadaraya-Watson: fused attention kernel vs the direct Q × K kernel",
        "",
        "Median time of one forward pass over all queries; peak memory above what was resident before the "
        "passes (peak RSS on CPU, allocator peak on CUDA). Each case runs in its own process.",
        "",
    ]
    headers = [
        "device",
        "queries × keys × dims",
        "fused ms",
        "direct ms",
        "speed-up",
        "fused peak MiB",
        "direct peak MiB",
        "Q×K float32 MiB",
    ]
    out.append(
        table(
            headers,
            [
                [
                    r["device"],
                    f"{r['queries']} × {r['keys']:,} × {r['dims']}",
                    r["fused_ms"],
                    r["direct_ms"],
                    r["speedup"],
                    r["fused_peak_mib"],
                    r["direct_peak_mib"],
                    r["queries"] * r["keys"] * 4 / 2**20,
                ]
                for r in rows
            ],
        )
    )
    for device in sorted({r["device"] for r in rows}):
        one_d = [r for r in rows if r["device"] == device and r["dims"] == 1]
        largest = max(one_d, key=lambda r: r["queries"] * r["keys"])
        qk_mib = largest["queries"] * largest["keys"] * 4 / 2**20
        out += [
            "",
            f"Target ({device}): ≥ 1.5× faster at the largest size — {largest['speedup']:.2f}× "
            f"{verdict(largest['speedup'] >= 1.5)}; memory that grows with Q + K, not Q × K — fused peak "
            f"{largest['fused_peak_mib']:.1f} MiB against {qk_mib:,.0f} MiB for one Q × K matrix "
            f"{verdict(largest['fused_peak_mib'] < 0.05 * qk_mib)}.",
        ]
        if device == "cuda":
            out.append(
                "Achieved bandwidth (fused, inputs read once): "
                + ", ".join(
                    f"{r['queries']}×{r['keys']}: {r['fused_gb_per_s']:.1f} GB/s" for r in rows if r["device"] == "cuda"
                )
            )
    return "\n".join(out)


def mha_section(rows: list[dict]) -> str:
    out = [
        "## 2. Multi-head attention: ours vs `torch.nn.MultiheadAttention`",
        "",
        "Same shapes and weights, self-attention with a key-padding mask; median time per call, the two "
        "measured in alternating rounds.",
        "",
    ]
    out.append(
        table(
            ["device", "shape", "mode", "ours ms", "torch ms", "ratio"],
            [[r["device"], r["shape"], r["mode"], r["ours_ms"], r["torch_ms"], r["ratio"]] for r in rows],
        )
    )
    worst = max(r["ratio"] for r in rows)
    out += ["", f"Target: ≤ 1.0× — worst ratio {worst:.2f}× {verdict(worst <= 1.0)}."]
    return "\n".join(out)


def serving_section(rows: list[dict]) -> str:
    client = rows[0]["client"] if rows else "?"
    out = [
        "## 3. Serving: TorchServe on loopback",
        "",
        f"Load generator: {client}; each cell a fixed-time run after a warm-up. Variants: our handler with "
        f"dynamic batching (`batchSize` {MODEL_CONFIG['batchSize']}, `maxBatchDelay` "
        f"{MODEL_CONFIG['maxBatchDelay']} ms), our handler unbatched (`batchSize` 1), and a "
        "bare baseline handler (same checkpoint and server config, no validation or metadata). Load generator, "
        "TorchServe frontend and workers share the machine's cores.",
        "",
    ]
    out.append(
        table(
            ["model", "variant", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"],
            [
                [r["model"], r["variant"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]]
                for r in rows
            ],
        )
    )
    top = max(r["concurrency"] for r in rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        cell = {r["variant"]: r["rps"] for r in rows if r["model"] == model and r["concurrency"] == top}
        vs_base = cell["ours, batched"] / cell["bare baseline, batched"]
        vs_unbatched = cell["ours, batched"] / cell["ours, unbatched"]
        out += [
            "",
            f"`{model}` at c{top}: ours / baseline = {vs_base:.2f}× (target ≥ 0.9×) {verdict(vs_base >= 0.9)}; "
            f"batched / unbatched = {vs_unbatched:.1f}× (target ≥ 5×) {verdict(vs_unbatched >= 5)}.",
        ]
    return "\n".join(out)


def tuning_section(rows: list[dict]) -> str:
    anchor = rows[0]
    out = [
        "## 4. Tuning efficiency on `nw-sine`",
        "",
        f"Anchor: best single bandwidth on a dense grid, w = {anchor['anchor_bandwidth']:.2f}, test MSE "
        f"{anchor['anchor_test_mse']:.4f}. Target: the tuner's best trial (chosen on validation) within 10% of it "
        "on test. Seeded studies of the project's search space, with the median pruner and without.",
        "",
    ]
    out.append(
        table(
            [
                "pruning",
                "studies reaching target",
                "median trials",
                "median seconds",
                "epochs trained (mean)",
                "pruned trials (mean)",
                "study seconds (mean)",
            ],
            [
                [
                    "on" if r["pruning"] else "off",
                    r["reached"],
                    r["median_trials_to_target"],
                    r["median_seconds_to_target"],
                    r["mean_epochs_trained"],
                    r["mean_pruned"],
                    r["mean_study_seconds"],
                ]
                for r in rows
            ],
        )
    )
    return "\n".join(out)


def quality_section(rows: list[dict]) -> str:
    out = [
        "## 5. Model quality against peers (same splits)",
        "",
        "Peers: grid-searched by 5-fold cross-validation on train+validation, refit on train+validation, scored "
        "once on test; in brackets the validation-selected variant (selected on the validation split, refit on "
        "train). Ours: tuned by its own protocol (`cv5`: trials scored by 5-fold cross-validation on "
        "train+validation, the best refit on train+validation; `holdout`: the validation split), tested once.",
        "",
    ]
    table_rows = []
    for r in rows:
        best_peer = max(r["peers"].values()) if "higher" in r["metric"] else min(r["peers"].values())
        on_validation = r.get("peers_validation_selected", {})
        peers = [
            f"{k} {v:.3f}" + (f" ({on_validation[k]:.3f})" if k in on_validation else "") for k, v in r["peers"].items()
        ]
        table_rows.append(
            [
                r["task"],
                r["metric"],
                r["ours"],
                r.get("protocol", "holdout"),
                ", ".join(peers),
                r["ours"] / best_peer,
                r["ours_budget"],
            ]
        )
    out.append(table(["task", "metric", "ours", "our protocol", "peers", "ours / best peer", "our budget"], table_rows))
    return "\n".join(out)


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


def large_nw_section(rows: list[dict]) -> str:
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
                    t["trial_s"],
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
    out += [
        "",
        "Cost model: the prototypes cost one k-means (Lloyd's iterations on at most 65,536 sampled rows, then one "
        "assignment pass: O(N M D)); an epoch costs O(N M D) (a batch x M score matrix per step, never batch x M x "
        "D); memory is O(batch x M + N D); serving costs O(M D) per query whatever N is, and the archive holds M "
        "prototypes (M x D keys, M values, M counts, 5 row numbers each).",
    ]
    return "\n".join(out)


def samplers_section(rows: list[dict]) -> str:
    out = [
        "## 10. Samplers: the best validation value after 10, 20 and 30 trials",
        "",
        "Median over seeds (± one standard error) of the best validation MSE so far; lower is better. `default` is "
        "`training/search/study.py` `study_sampler`.",
        "",
        table(
            ["task", "sampler", "trials", "median best val MSE", "± s.e.", "seeds' values", "study s"],
            [
                [
                    r["task"],
                    r["sampler"],
                    r["trials"],
                    r["median"],
                    r["standard_error"],
                    " ".join(f"{v:.4g}" for v in r["values"]),
                    r["seconds"],
                ]
                for r in rows
            ],
        ),
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        out.append(
            f"`{task}`: the default is the best or within one standard error of it {verdict(default_holds(rows, task))}"
        )
    return "\n".join(out)


def score_section(rows: list[dict]) -> str:
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


def bookkeeping_section(rows: list[dict]) -> str:
    out = [
        "## 12. Bookkeeping: trials per minute tracked against untracked",
        "",
        "The same `Objective`, seeded sampler and pruner, so both try the same trials: tracked as `make tune` runs "
        "them (an MLflow child run per trial in a SQLite store, the study in a SQLite Optuna storage, per-epoch "
        "metrics buffered and written in one batch), untracked with no trial log and an in-memory study. Rates over "
        "the search (first trial's start to last trial's end); the invocation's fixed costs are the last column.",
        "",
        table(
            ["case", "trials", "untracked / min", "tracked / min", "ratio", "tracked invocation s"],
            [
                [
                    r["case"],
                    r["trials"],
                    r["untracked_per_min"],
                    r["tracked_per_min"],
                    r["ratio"],
                    r["tracked_invocation_seconds"],
                ]
                for r in rows
            ],
        ),
    ]
    sine = next((r for r in rows if r["case"] == "nw-sine"), None)
    if sine:
        out += [
            "",
            f"Target: tracked ≥ {BOOKKEEPING_TARGET}× untracked on nw-sine — {sine['ratio']:.2f}× "
            f"{verdict(sine['ratio'] >= BOOKKEEPING_TARGET)}.",
        ]
    return "\n".join(out)


SECTIONS = {
    "nw_kernel": nw_section,
    "mha": mha_section,
    "serving": serving_section,
    "tuning": tuning_section,
    "quality": quality_section,
    "batch_delay": delay_section,
    "soak": soak_section,
    "metrics_cost": metrics_section,
    "large_nw": large_nw_section,
    "samplers": samplers_section,
    "score": score_section,
    "bookkeeping": bookkeeping_section,
}


def provenance_lines(results: dict) -> list[str]:
    """One line if every row was measured at the same commit, else which commit and date each row comes from."""
    marks = {
        name: results.get("provenance", {}).get(name, {"commit": "unknown", "date": "unknown"})
        for name in results["rows"]
    }
    if len({m["commit"] for m in marks.values()}) <= 1:
        commit = next(iter(marks.values()), {"commit": "unknown"})["commit"]
        return [f"- every row measured at commit {commit}"]
    return ["- rows measured at different commits (a later run of some rows with `--only`):"] + [
        f"  - {name}: commit {m['commit']}, {m['date']}" for name, m in marks.items()
    ]


def write_markdown(results: dict, path: Path) -> None:
    m, seconds = results["machine"], results["seconds"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `make bench` ({'QUICK smoke run — not a result' if results['quick'] else 'full run'}); "
        f"last run {m['date']}.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"{m['memory_gib']} GiB, GPU: {m['gpu']}",
        f"- python {m['python']}; {versions}",
        f"- seconds per row: {', '.join(f'{k} {seconds[k]}' for k in results['rows'])}",
        *provenance_lines(results),
        "",
    ]
    if m["gpu"] == "none":
        lines += [
            "CUDA rows (1 and 2 on a GPU, with achieved bandwidth) were not run: this machine has no CUDA device.",
            "",
        ]
    for name, rows in results["rows"].items():
        lines += [SECTIONS[name](rows), ""]
    path.write_text("\n".join(lines))
