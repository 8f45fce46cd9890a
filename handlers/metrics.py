"""What each batch did, as metrics an operator can watch: requests and instances by route, outcome and protocol
(`contract`: `/predictions` and `/explanations`; `oip`: the Open Inference Protocol), how full
the batch was, the handler's time and the priced cost, and how unfamiliar the answered inputs were (novelty:
each instance's score as a quantile of the scores of held-out data, counted by band; `training/nn/novelty.py`).
They go out through TorchServe's metrics, and only those declared in the server's metrics configuration
(`training/serving/metrics.yaml`) reach Prometheus; `DECLARED` names them, and a test keeps the two in step.
Measuring never fails a request."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from training.nn import novelty

from .types import Answer

logger = logging.getLogger(__name__)

REQUESTS, INSTANCES = "attention_requests_total", "attention_instances_total"
BATCH_REQUESTS, HANDLER_MS, BATCH_MMAC = "attention_batch_requests", "attention_handler_ms", "attention_batch_mmac"
NOVELTY, BEYOND_RANGE = "attention_novelty_instances_total", "attention_beyond_training_range_total"
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
    counts: dict[tuple[str, str, str], list[int]] = {}
    for answer, explained in zip(answers, explain):
        key = (answer.route or ("explanations" if explained else "predictions"), answer.outcome, answer.protocol)
        requests, instances = counts.setdefault(key, [0, 0])
        counts[key] = [requests + 1, instances + answer.instances]
    figures = []
    for (route, outcome, protocol), (requests, instances) in sorted(counts.items()):
        dimensions = {"model_version": version, "route": route, "outcome": outcome, "protocol": protocol}
        figures += [Figure(REQUESTS, requests, dimensions), Figure(INSTANCES, instances, dimensions)]
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
    """Hands figures to TorchServe's metrics cache; a failure is logged once and never reaches an answer."""

    def __init__(self) -> None:
        self.failed = False

    def emit(self, cache, figures: list[Figure]) -> None:
        try:
            from ts.metrics.dimension import Dimension
            from ts.metrics.metric_type_enum import MetricTypes

            for figure in figures:
                kind, unit, names = DECLARED[figure.name]
                dimensions = [Dimension(name, str(figure.dimensions[name])) for name in names]
                cache.add_metric(figure.name, figure.value, unit, dimensions=dimensions, metric_type=MetricTypes(kind))
        except Exception as error:  # measuring must not fail the batch
            if not self.failed:
                logger.warning("handler metrics are off for this worker: %s: %s", type(error).__name__, error)
            self.failed = True
