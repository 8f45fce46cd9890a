"""One trial's MLflow run in the run writer (`run_writer.py`): its per-epoch metrics kept in memory and written in
one `log_batch` (every `flush_seconds` and when the trial ends), then closed with its final metrics and marks in
one more batch.

Each MLflow write to a SQLite store costs tens of milliseconds (several commits), about the time a small model
takes to train an epoch: one batch instead of a write per epoch keeps the writer ahead of the trials. Every write
is a whole MLflow call, and a run left RUNNING (its worker killed) is closed by the next invocation
(`trial_log.close_dead_runs`).
"""

from __future__ import annotations

import math
import time

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

# A running trial's epochs reach MLflow at least this often, besides at its end: a long trial's curve grows in
# the UI while it trains, and a kill -9 loses at most this much of it.
FLUSH_SECONDS = 10.0


class TrialRecord:
    """The MLflow run `run_id` (named `name`) of one trial: `epoch` buffers, `flush` writes, `close` ends it.
    `params` go with the first write. The run writer (`run_writer.py`) keeps one per open run."""

    def __init__(
        self,
        client: mlflow.MlflowClient,
        run_id: str,
        name: str,
        flush_seconds: float = FLUSH_SECONDS,
        params: dict | None = None,
    ):
        self.client, self.run_id, self.name, self.flush_seconds = client, run_id, name, flush_seconds
        self._params = [Param(k, str(v)) for k, v in (params or {}).items()]
        self._pending: list[Metric] = []
        self._written = time.monotonic()

    def epoch(self, values: dict[str, float], step: int) -> None:
        """Keep one step's metrics (non-finite values are left out); write them all once `flush_seconds` passed."""
        self._pending += metrics_at(values, step)
        if time.monotonic() - self._written >= self.flush_seconds:
            self.flush()

    def flush(self, tags: dict[str, str] | None = None) -> None:
        """Write what is buffered (the parameters with the first write), and `tags` with its last part: one
        `log_batch` per MLflow batch limit (the limit counts tags and parameters too), usually one. What a failed
        write did not take stays buffered."""
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        while len(self._params) > MAX_PARAMS_TAGS_PER_BATCH:  # MLflow's cap on a batch's parameters
            self.client.log_batch(self.run_id, params=self._params[:MAX_PARAMS_TAGS_PER_BATCH])
            del self._params[:MAX_PARAMS_TAGS_PER_BATCH]
        room = MAX_ENTITIES_PER_BATCH - len(run_tags) - len(self._params)
        while len(self._pending) > room:
            self.client.log_batch(self.run_id, metrics=self._pending[:room], params=self._params)
            del self._pending[:room]
            self._params, room = [], MAX_ENTITIES_PER_BATCH - len(run_tags)
        if self._pending or run_tags or self._params:
            self.client.log_batch(self.run_id, metrics=self._pending, params=self._params, tags=run_tags)
            self._pending, self._params = [], []
        self._written = time.monotonic()

    def close(
        self,
        state: str,
        status: str,
        reason: str | None = None,
        metrics: dict[str, float] | None = None,
        suffix: str = "",
    ) -> None:
        """End the run: the buffered epochs, `metrics` (step 0), the Optuna state and reason (and `suffix` on its
        name) in one batch, then its status."""
        self._pending += metrics_at(metrics or {}, 0)
        tags = {"optuna.state": state} | ({"optuna.reason": reason} if reason else {})
        if suffix and not self.name.endswith(suffix):
            tags[MLFLOW_RUN_NAME] = self.name = self.name + suffix
        self.flush(tags)
        self.client.set_terminated(self.run_id, status)


class NoRecord:
    """A trial that is not tracked (`Objective` without a log): every call does nothing."""

    def epoch(self, values: dict[str, float], step: int) -> None:
        pass

    def close(self, state: str, status: str, reason: str | None = None, metrics=None, suffix: str = "") -> None:
        pass


def metrics_at(values: dict[str, float], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
