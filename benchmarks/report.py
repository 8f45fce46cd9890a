"""benchmarks/results.md from the results dict: one section per row (each row's module writes its own, with its
target and verdict; `benchmarks/rows.py` names it), under the machine and provenance lines."""

from __future__ import annotations

from pathlib import Path

from benchmarks.rows import BY_NAME


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
        lines += [BY_NAME[name].section(rows), ""]
    path.write_text("\n".join(lines))
