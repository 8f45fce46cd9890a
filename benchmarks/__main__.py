"""`python -m benchmarks [--quick] [--only ROWS] [--out DIR] [--client auto|wrk|python]`.

A run of some rows (`--only`) replaces those rows in the existing results and keeps the others; every row
records the commit and date it was measured at, and results.md says so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import bookkeeping, large_nw, mha, nw_kernel, quality, samplers, score, serving, serving_ops, tuning
from benchmarks.common import ROOT, machine, provenance
from benchmarks.report import write_markdown

ROWS = [
    "nw_kernel",
    "mha",
    "serving",
    "tuning",
    "quality",
    "batch_delay",
    "soak",
    "metrics_cost",
    "large_nw",
    "samplers",
    "score",
    "bookkeeping",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and budgets (a smoke test, not a result)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="where results.md and results.json go")
    parser.add_argument("--client", default="auto", choices=["auto", "wrk", "python"], help="serving load generator")
    args = parser.parse_args(argv)
    only = args.only.split(",")
    unknown = sorted(set(only) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {ROWS}")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = Path(args.out)
    results = previous_results(out / "results.json", args.quick, keep=set(ROWS) - set(only))
    results["machine"] = machine()
    runners = {
        "nw_kernel": lambda: [r for d in devices for r in nw_kernel.run(args.quick, d)],
        "mha": lambda: [r for d in devices for r in mha.run(args.quick, d)],
        "serving": lambda: serving.run(args.quick, args.client),
        "tuning": lambda: tuning.run(args.quick),
        "quality": lambda: quality.run(args.quick),
        "batch_delay": lambda: serving_ops.run_delays(args.quick, args.client),
        "soak": lambda: serving_ops.run_soak(args.quick, args.client),
        "metrics_cost": lambda: serving_ops.run_metrics_cost(args.quick, args.client),
        "large_nw": lambda: large_nw.run(args.quick),
        "samplers": lambda: samplers.run(args.quick),
        "score": lambda: score.run(args.quick),
        "bookkeeping": lambda: bookkeeping.run(args.quick),
    }
    for name in ROWS:
        if name in only:
            print(f"benchmark {name} ...", flush=True)
            start = time.perf_counter()
            results["rows"][name] = runners[name]()
            results["seconds"][name] = round(time.perf_counter() - start, 1)
            results["provenance"][name] = provenance()
    results["rows"] = {name: results["rows"][name] for name in ROWS if name in results["rows"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_markdown(results, out / "results.md")
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


def previous_results(path: Path, quick: bool, keep: set[str]) -> dict:
    """The rows of an earlier run of the same kind (full or quick) that this run does not measure again."""
    results = {"quick": quick, "rows": {}, "seconds": {}, "provenance": {}}
    if not keep or not path.exists():
        return results
    earlier = json.loads(path.read_text())
    if earlier.get("quick") != quick:
        return results
    for name in keep & set(earlier.get("rows", {})):
        results["rows"][name] = earlier["rows"][name]
        results["seconds"][name] = earlier["seconds"].get(name)
        results["provenance"][name] = earlier.get("provenance", {}).get(name, {"commit": "unknown", "date": "unknown"})
    return results


if __name__ == "__main__":
    raise SystemExit(main())
