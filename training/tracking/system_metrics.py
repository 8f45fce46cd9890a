"""MLflow's system metrics (CPU, memory, disk, network; GPU where nvidia-ml-py is installed) on one run: a tuning
invocation's parent run, so that a slow search can be told apart from a starved machine.

The parent run is made by the client, not by `mlflow.start_run`, so `log_system_metrics=True` does not apply to
it; MLflow's own monitor is started here for that run alone. Never process-wide
(`mlflow.enable_system_metrics_logging`): every trial's run and the conclusion's would get a monitor of their own.
"""

from __future__ import annotations

import contextlib

from mlflow import MlflowClient
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

# One sample every 5 s (MLflow's default is 10): a few minutes of tuning is a curve; a tiny search still ends with
# the last sample taken on exit. MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SAMPLING_SECONDS = 5.0


class SystemMetrics:
    """Samples the machine into `run_id` as `system/...` metrics while the `with` block runs; the sampling
    thread is stopped and joined on exit, whatever ended the block."""

    def __init__(self, client: MlflowClient, run_id: str, interval: float = SAMPLING_SECONDS):
        self.monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval, samples_before_logging=1, tracking_uri=client.tracking_uri
        )

    def __enter__(self) -> SystemMetrics:
        self.monitor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.monitor.finish()
        # Stopped, the monitor drops the window it was sampling: one last sample keeps a short run's. Best
        # effort: a store that fails here must not replace what ended the block.
        with contextlib.suppress(Exception):
            self.monitor.collect_metrics()
            self.monitor.publish_metrics(self.monitor.aggregate_metrics())
            self.monitor.mlflow_logger.flush()
