"""Readable summaries printed at the end of a command."""

from __future__ import annotations

import json

from . import tracking


def table(rows: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def print_tune_summary(result, options) -> None:
    uri = options.tracking_uri or tracking.default_tracking_uri()
    test = ", ".join(f"{k}={v:.4g}" for k, v in result.test_metrics.items())
    states = ", ".join(f"{k}={v}" for k, v in result.states.items() if v)
    rows = [
        ("study", f"{result.name} ({states})"),
        ("best trial", f"#{result.best_trial}, validation value {result.best_value:.6g}"),
        ("best params", json.dumps(result.best_params, default=str)),
        ("test (refit)", test),
        ("registered", f"models:/{result.name}/{result.model_version}"),
        ("champion", ("moved: " if result.promoted else "unchanged: ") + result.decision),
        (
            "review",
            f"make ui -> http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}",
        ),
        ("store", uri),
    ]
    print("\nTuning summary\n" + table(rows))
