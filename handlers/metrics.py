"""What each batch did, as metrics an operator can watch: requests and instances by route, outcome and protocol
(`contract`: `/predictions` and `/explanations`; `oip`: the Open Inference Protocol), how full
the batch was, the handler's time and the priced cost, and how unfamiliar the answered inputs were (novelty:
each instance's score as a quantile of the scores of held-out data, counted by band; `training/nn/novelty.py`).
They go out through TorchServe's metrics, and only those declared in the server's metrics configuration
(`training/serving/metrics.yaml`) reach Prometheus; `DECLARED` names them, and a test keeps the two in step.
A batch's figures go out at most `FLUSH_SECONDS` after it, with every other batch's of that second in one write:
histograms one line per observation, counters summed (at c64 a batch ends every ~5 ms: one write and one wake-up of
the frontend's reader thread a second, not one a batch); a worker killed outright loses at most that last second of
figures. Measuring never fails a request."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from training.nn import novelty

from .types import Answer

logger = logging.getLogger(__name__)

REQUESTS, INSTANCES = "attention_requests_total", "attention_instances_total"
BATCH_REQUESTS, HANDLER_MS, BATCH_MMAC = "attention_batch_requests", "attention_handler_ms", "attention_batch_mmac"
NOVELTY, BEYOND_RANGE = "attention_novelty_instances_total", "attention_beyond_training_range_total"
UNITS = {"Count": "Count", "ms": "Milliseconds"}  # a declared unit -> the name TorchServe's own lines give it
FLUSH_SECONDS = 1.0  # a figure goes out at most this long after its batch
MAX_HELD_LINES = 5_000  # or sooner, once this many histogram observations wait
# name -> (TorchServe's metric type, unit, dimensions besides the model's name and TorchServe's Level)
DECLARED = {
    REQUESTS: ("counter", "Count", ["model_version", "route", "outcome", "protocol"]),
    INSTANCES: ("counter", "Count", ["model_version", "route", "outcome", "protocol"]),
    BATCH_REQUESTS: ("histogram", "Count", ["model_version", "protocols"]),  # protocols: contract, oip or both
    HANDLER_MS: ("histogram", "ms", ["model_version"]),
    BATCH_MMAC: ("histogram", "Count", ["model_version"]),
    NOVELTY: ("counter", "Count", ["model_version", "band"]),  # band: novelty.band_names()
    BEYOND_RANGE: ("counter", "Count", ["model_version"]),  # tabular models' instances outside the training range
}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    dimensions: dict[str, str]


def batch_figures(
    answers: list[Answer], explain: list[bool], version: str, seconds: float, reference: list[float] | None = None
) -> list[Figure]:
    """The batch's figures: a count per (route, outcome), its fill, its time and its priced cost, and with a
    novelty reference the answered instances per novelty band and beyond the training range."""
    requests: dict[tuple[str, str, str], int] = {}
    instances: dict[tuple[str, str, str], int] = {}
    for answer, explained in zip(answers, explain):
        key = (answer.route or ("explanations" if explained else "predictions"), answer.outcome, answer.protocol)
        requests[key] = requests.get(key, 0) + 1
        instances[key] = instances.get(key, 0) + answer.instances
    figures = []
    for key in sorted(requests):
        route, outcome, protocol = key
        dimensions = {"model_version": version, "route": route, "outcome": outcome, "protocol": protocol}
        figures += [Figure(REQUESTS, requests[key], dimensions), Figure(INSTANCES, instances[key], dimensions)]
    version_only = {"model_version": version}
    mmac = sum(a.mmac for a in answers if a.status == 200)
    protocols = sorted({answer.protocol for answer in answers}) or ["contract"]
    mix = {"model_version": version, "protocols": protocols[0] if len(protocols) == 1 else "both"}
    figures += [
        Figure(BATCH_REQUESTS, len(answers), mix),
        Figure(HANDLER_MS, seconds * 1000, version_only),
        Figure(BATCH_MMAC, mmac, version_only),
    ]
    return figures + novelty_figures(answers, version, reference or [])


def novelty_figures(answers: list[Answer], version: str, reference: list[float]) -> list[Figure]:
    """Answered instances by novelty band (none without a reference: archives built before it) and beyond range."""
    scores = [s for a in answers if a.status == 200 for s in a.novelty if s is not None]
    bands = novelty.count_bands(scores, reference)
    figures = [Figure(NOVELTY, n, {"model_version": version, "band": name}) for name, n in sorted(bands.items())]
    beyond = sum(a.beyond_range for a in answers if a.status == 200)
    if beyond:
        figures.append(Figure(BEYOND_RANGE, beyond, {"model_version": version}))
    return figures


class MetricsSink:
    """Writes figures to the worker's stdout as TorchServe's backend-metric lines, which the frontend reads line by
    line into the metrics it serves: `[METRICS]name.unit:value|#dimensions|#type:T|#hostname:H,time`, the model's
    name and `Level:Model` last among the dimensions, as TorchServe's `add_metric` writes them, but held and written
    together (module docstring) and without the batch's request ids (the frontend's Prometheus metrics ignore them).
    (The metrics cache's own path also costs ~25 µs a figure: a host-name lookup and a logging call each.)
    A failure is logged once and never reaches an answer."""

    def __init__(self, write: Callable[[str], None] = logger.info, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.failed = False
        self.host = socket.gethostname()
        self.write, self.flush_seconds = write, flush_seconds
        self.held: list[str] = []  # histogram observations' lines not yet written
        self.counted: dict[tuple[str, str], float] = {}  # (name, dimensions) -> the sum not yet written
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def emit(self, cache, figures: list[Figure]) -> None:
        try:
            common = f"ModelName:{cache.model_name},Level:Model"
            with self.lock:
                for figure in figures:
                    kind, _, names = DECLARED[figure.name]
                    dimensions = "".join(f"{name}:{figure.dimensions[name]}," for name in names) + common
                    if kind == "counter":
                        key = (figure.name, dimensions)
                        self.counted[key] = self.counted.get(key, 0) + figure.value
                    else:
                        self.held.append(self.line(figure.name, figure.value, dimensions))
                full = len(self.held) >= MAX_HELD_LINES
                if not full and self.timer is None and (self.held or self.counted):
                    self.timer = threading.Timer(self.flush_seconds, self.flush)
                    self.timer.daemon = True
                    self.timer.start()
            if full:
                self.flush()
        except Exception as error:  # measuring must not fail the batch
            self.off(error)

    def flush(self) -> None:
        """Writes what is held, in one write (the timer calls it; so may a test)."""
        try:
            with self.lock:
                held, counted, self.held, self.counted = self.held, self.counted, [], {}
                if self.timer is not None and self.timer is not threading.current_thread():
                    self.timer.cancel()
                self.timer = None
            held += [self.line(name, value, dimensions) for (name, dimensions), value in counted.items()]
            if held:
                self.write("\n".join(held))
        except Exception as error:
            self.off(error)

    def line(self, name: str, value: float, dimensions: str) -> str:
        kind, unit, _ = DECLARED[name]
        stamp = f"{self.host},{int(time.time())}"
        return f"[METRICS]{name}.{UNITS[unit]}:{value}|#{dimensions}|#type:{kind.upper()}|#hostname:{stamp}"

    def off(self, error: Exception) -> None:
        if not self.failed:
            logger.warning("handler metrics are off for this worker: %s: %s", type(error).__name__, error)
        self.failed = True
