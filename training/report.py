"""Readable summaries printed at the end of a command."""

from __future__ import annotations

import json

from . import tracking


def table(rows: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def review_link(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a reviewer opens the run: the tracking server itself, or `make ui` over a local store."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{tracking.redact(uri).rstrip('/')}/{path}"
    return f"make ui -> http://127.0.0.1:5000/{path}"


def counts(states: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in states.items() if v) or "none"


def conclusion_rows(name: str, conclusion) -> list[tuple[str, object]]:
    test = ", ".join(f"{k}={v:.4g}" for k, v in conclusion.test_metrics.items())
    registered = f"models:/{name}/{conclusion.model_version}" + (
        "" if conclusion.registered else " (registered before)"
    )
    return [
        (
            "best trial",
            f"#{conclusion.best_trial}, validation value {conclusion.best_value:.6g} (selects the champion)",
        ),
        ("best params", json.dumps(conclusion.best_params, default=str)),
        ("test (refit)", f"{test} (reported, never used to select)"),
        ("registered", registered),
        ("champion", ("moved: " if conclusion.promoted else "unchanged: ") + conclusion.decision),
    ]


def print_tune_summary(result, options) -> None:
    rows = [
        ("study", result.name),
        (
            "this worker",
            f"{sum(result.states.values())} trials ({counts(result.states)}), sampler seed {result.sampler_seed}",
        ),
        ("whole study", f"{sum(result.study_states.values())} trials ({counts(result.study_states)}), all workers"),
    ]
    if result.conclusion is None:
        rows.append(("conclusion", f"left to `make conclude NAME={result.name}` (this worker ran with CONCLUDE=0)"))
    else:
        rows += conclusion_rows(result.name, result.conclusion)
    rows += [
        ("review", review_link(result.tracking_uri, result.experiment_id, result.parent_run_id)),
        ("store", tracking.redact(result.tracking_uri)),
    ]
    print("\nTuning summary\n" + table(rows))


def print_conclusion(name: str, conclusion, tracking_uri: str, experiment_id: str, run_id: str) -> None:
    rows = [("study", name)] + conclusion_rows(name, conclusion)
    rows += [("review", review_link(tracking_uri, experiment_id, run_id)), ("store", tracking.redact(tracking_uri))]
    print("\nConclusion\n" + table(rows))
