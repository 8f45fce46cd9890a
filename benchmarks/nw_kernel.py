"""Row 1: Nadaraya-Watson fused path (attention kernel on augmented q/k) vs the direct Q x K kernel.

Each case runs in its own process so its peak memory is its own. `python -m benchmarks.nw_kernel Q K D path device`
prints one JSON line.
"""

from __future__ import annotations

import json
import sys

import torch

from benchmarks.common import median_seconds, peak_rss_bytes, reset_peak_rss, run_isolated
from benchmarks.markdown import table, verdict
from training.nn import NadarayaWatson, NWConfig

SIZES = [(50, 50, 1), (1024, 4096, 1), (4096, 16384, 1), (4096, 65536, 1), (2048, 16384, 8)]
QUICK_SIZES = [(512, 2048, 1)]  # a smoke run: one size, each path in a process of its own as in the full run


def build(n_queries: int, n_keys: int, dims: int, fused: bool, device: str) -> tuple[NadarayaWatson, torch.Tensor]:
    torch.manual_seed(0)
    model = NadarayaWatson(
        NWConfig(
            in_features=dims,
            n_keys=n_keys,
            bandwidth=2.0,
            learn_bandwidth=False,
            fused=fused,
            chunk_size=max(n_queries, 1),
        )
    )
    model.set_memory(torch.randn(n_keys, dims), torch.randn(n_keys))
    return model.to(device).eval(), torch.randn(n_queries, dims, device=device)


def measure_case(n_queries: int, n_keys: int, dims: int, path: str, device: str) -> dict:
    model, queries = build(n_queries, n_keys, dims, path == "fused", device)
    with torch.no_grad():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:  # the peak resident memory of the passes above what was resident before them
            base = reset_peak_rss()
        repeats = 3 if n_queries * n_keys > 2**26 else 7
        seconds = median_seconds(lambda: model(queries), repeats=repeats)
        peak = (torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()) - base
    # Bytes the kernel must at least read: queries, keys and values once.
    moved = 4 * (n_queries * dims + n_keys * (dims + 1))
    return {"seconds": seconds, "peak_bytes": max(peak, 0), "bytes_moved": moved}


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    rows = []
    for q, k, d in QUICK_SIZES if quick else SIZES:
        result = {
            p: run_isolated("benchmarks.nw_kernel", [str(q), str(k), str(d), p, device]) for p in ("fused", "direct")
        }
        fused, direct = result["fused"], result["direct"]
        rows.append(
            {
                "device": device,
                "queries": q,
                "keys": k,
                "dims": d,
                "fused_ms": fused["seconds"] * 1e3,
                "direct_ms": direct["seconds"] * 1e3,
                "speedup": direct["seconds"] / fused["seconds"],
                "fused_peak_mib": fused["peak_bytes"] / 2**20,
                "direct_peak_mib": direct["peak_bytes"] / 2**20,
                "fused_gb_per_s": fused["bytes_moved"] / fused["seconds"] / 1e9,
            }
        )
    return rows


if __name__ == "__main__":
    q, k, d, path, device = sys.argv[1:6]
    print(json.dumps(measure_case(int(q), int(k), int(d), path, device)))


def section(rows: list[dict]) -> str:
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
