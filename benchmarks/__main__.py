"""`python -m benchmarks [--quick] [--only ROWS] [--out DIR] [--client auto|wrk|python] [--champions URI]`.

A run of some rows (`--only`) replaces those rows in the existing results and keeps the others; every row
records the commit and date it was measured at, and results.md says so.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks import serving
from benchmarks.common import ROOT, machine, provenance
from benchmarks.report import write_markdown
from benchmarks.rows import BY_NAME, ROWS, Settings


def main(argv: list[str] | None = None) -> int:
    names = list(BY_NAME)
    targets = "\n".join(f"  {row.name}: {row.target}" for row in ROWS)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        epilog=f"rows and their targets:\n{targets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and budgets (a smoke test, not a result)")
    parser.add_argument("--only", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="where results.md and results.json go")
    parser.add_argument("--client", default="auto", choices=["auto", "wrk", "python"], help="serving load generator")
    parser.add_argument(
        "--champions",
        metavar="TRACKING_URI",
        help="serve the @champion of nw-sine and mha-adding of this registry instead of tuning them afresh (tuned as "
        "this run would tune them: a quick run's mha-adding on the smaller `adding`); benchmark archives' digests "
        "are tagged on their versions",
    )
    args = parser.parse_args(argv)
    if args.champions:
        os.environ[serving.GIVEN_CHAMPIONS] = args.champions
    only = args.only.split(",")
    unknown = sorted(set(only) - set(names))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {names}")

    devices = ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())
    settings = Settings(quick=args.quick, client=args.client, devices=devices)
    out = Path(args.out)
    results = previous_results(out / "results.json", args.quick, keep=set(names) - set(only))
    results["machine"] = machine()
    for row in ROWS:
        if row.name in only:
            print(f"benchmark {row.name} ...", flush=True)
            start = time.perf_counter()
            results["rows"][row.name] = row.run(settings)
            results["seconds"][row.name] = round(time.perf_counter() - start, 1)
            results["provenance"][row.name] = provenance()
    results["rows"] = {name: results["rows"][name] for name in names if name in results["rows"]}
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
