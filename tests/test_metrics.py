"""Handler metrics: what a batch did, counted by route and outcome, declared where TorchServe reads them."""

import json

import yaml
from test_limits import INFO, nw_model

from handlers.contract import Limits, adapter_for, answer_batch
from handlers.metrics import (
    BATCH_MMAC,
    BATCH_REQUESTS,
    DECLARED,
    HANDLER_MS,
    INSTANCES,
    REQUESTS,
    MetricsSink,
    batch_figures,
)
from training.serving.serve import METRICS_CONFIG


def test_every_metric_the_handler_emits_is_declared_for_torchserve_with_the_same_dimensions():
    declared = yaml.safe_load(METRICS_CONFIG.read_text())["model_metrics"]
    found = {m["name"]: (kind, m["unit"], m["dimensions"]) for kind, metrics in declared.items() for m in metrics}
    for name, (kind, unit, dimensions) in DECLARED.items():
        assert found[name] == (kind, unit, [*dimensions, "ModelName", "Level"]), name


def test_a_batch_is_counted_by_route_and_outcome_with_its_fill_time_and_cost():
    limits = Limits()
    adapter = adapter_for(nw_model(), limits)
    bodies = [{"instances": [1.0, 2.0]}, {"instances": ["x"]}, {"instances": [3.0]}, {"instances": [1.0]}]
    explain = [False, False, False, True]
    answers = answer_batch([json.dumps(b).encode() for b in bodies], explain, adapter, limits, INFO)
    figures = {
        (f.name, tuple(sorted(f.dimensions.items()))): f.value for f in batch_figures(answers, explain, "7", 0.012)
    }

    def count(name, route, outcome, protocol="contract"):
        return figures[(name, (("model_version", "7"), ("outcome", outcome), ("protocol", protocol), ("route", route)))]

    assert count(REQUESTS, "predictions", "answered") == 2 and count(INSTANCES, "predictions", "answered") == 3
    assert count(REQUESTS, "predictions", "invalid instance") == 1
    assert count(REQUESTS, "explanations", "answered") == 1 and count(INSTANCES, "explanations", "answered") == 1
    version = (("model_version", "7"),)
    assert figures[(BATCH_REQUESTS, (*version, ("protocols", "contract")))] == 4
    assert figures[(HANDLER_MS, version)] == 12.0
    assert figures[(BATCH_MMAC, version)] == sum(a.mmac for a in answers if a.status == 200) > 0


def test_a_failure_to_measure_is_logged_once_and_never_reaches_the_answer(caplog):
    class Broken:
        def add_metric(self, *args, **kwargs):
            raise RuntimeError("metrics backend gone")

    sink = MetricsSink()
    figures = batch_figures([], [], "1", 0.0)
    sink.emit(Broken(), figures)
    sink.emit(Broken(), figures)
    assert sink.failed and sum("metrics backend gone" in r.getMessage() for r in caplog.records) == 1


def test_open_inference_protocol_requests_are_counted_apart_with_their_own_routes():
    from handlers.oip import answer_any
    from handlers.oip_kinds import oip_kind

    limits = Limits()
    adapter = adapter_for(nw_model(), limits)
    oip = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 1], "data": [1.0, 2.0]}]}
    bodies = [{"instances": [1.0]}, oip, {}, {"inputs": []}]
    headers = [{}, {}, {"X-OIP-Route": "metadata"}, {}]
    raw = [json.dumps(b).encode() for b in bodies]
    answers, explain = answer_any(raw, [False] * 4, adapter, oip_kind(adapter), limits, INFO, headers)
    figures = {
        (f.name, tuple(sorted(f.dimensions.items()))): f.value for f in batch_figures(answers, explain, "7", 0.01)
    }

    def count(route, outcome, protocol):
        dimensions = (("model_version", "7"), ("outcome", outcome), ("protocol", protocol), ("route", route))
        return figures.get((REQUESTS, dimensions))

    assert count("predictions", "answered", "contract") == 1 and count("predictions", "answered", "oip") == 1
    assert count("metadata", "answered", "oip") == 1
    assert count("predictions", "invalid inference request", "oip") == 1
    assert figures[(BATCH_MMAC, (("model_version", "7"),))] > 0
    assert figures[(BATCH_REQUESTS, (("model_version", "7"), ("protocols", "both")))] == 4  # one batch, both
