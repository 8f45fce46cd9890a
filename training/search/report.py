"""Readable summaries printed at the end of a command."""

from __future__ import annotations

import json

from training.infra.storage_urls import redact
from training.tracking.review_links import review_link
from training.tracking.run_notes import run_route, trials_route


def table(rows: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def counts(states: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in states.items() if v) or "none"


def conclusion_rows(name: str, conclusion) -> list[tuple[str, object]]:
    test = ", ".join(f"{k}={v:.4g}" for k, v in conclusion.test_metrics.items())
    registered = f"models:/{name}/{conclusion.model_version}" + (
        "" if conclusion.registered else " (registered before)"
    )
    best = f"#{conclusion.best_trial}, best validation {conclusion.metric} {conclusion.best_value:.6g}"
    return [
        ("best trial", f"{best} (selects the champion)"),
        ("best params", json.dumps(conclusion.best_params, default=str)),
        ("test (refit)", f"{test} (reported, never used to select)"),
        ("registered", registered),
        ("champion", ("moved: " if conclusion.promoted else "unchanged: ") + conclusion.decision),
    ]


def print_tune_summary(result, options) -> None:
    uri = result.tracking_uri
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
        ("review", review_link(uri, run_route(result.experiment_id, result.parent_run_id))),
        ("trials", review_link(uri, trials_route(result.experiment_id))),
        ("dashboard", "make dashboard" + (f" STORAGE='{redact(options.storage)}'" if options.storage else "")),
        ("store", redact(uri)),
    ]
    print("\nTuning summary\n" + table(rows))


def print_conclusion(name: str, conclusion, tracking_uri: str, experiment_id: str, run_id: str) -> None:
    rows = [("study", name)] + conclusion_rows(name, conclusion)
    rows += [("review", review_link(tracking_uri, run_route(experiment_id, run_id))), ("store", redact(tracking_uri))]
    print("\nConclusion\n" + table(rows))
