"""Readable summaries printed at the end of a command."""

from __future__ import annotations

import json

from . import tracking
from .run_notes import run_route, trials_route
from .tracking import redact
from .ui import review_link


def table(rows: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def print_tune_summary(result, options) -> None:
    uri = options.tracking_uri or tracking.default_tracking_uri()
    test = ", ".join(f"{k}={v:.4g}" for k, v in result.test_metrics.items())
    states = ", ".join(f"{k}={v}" for k, v in result.states.items() if v)
    rows = [
        ("study", f"{result.name} ({states})"),
        ("best trial", f"#{result.best_trial}, best validation {result.metric} {result.best_value:.6g}"),
        ("best params", json.dumps(result.best_params, default=str)),
        ("test (refit)", test),
        ("registered", f"models:/{result.name}/{result.model_version}"),
        ("champion", ("moved: " if result.promoted else "unchanged: ") + result.decision),
        ("review", review_link(uri, run_route(result.experiment_id, result.parent_run_id))),
        ("trials", review_link(uri, trials_route(result.experiment_id))),
        ("dashboard", "make dashboard" + (f" STORAGE='{redact(options.storage)}'" if options.storage else "")),
        ("store", redact(uri)),
    ]
    print("\nTuning summary\n" + table(rows))
