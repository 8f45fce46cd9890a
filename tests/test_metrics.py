"""Handler metrics: what a batch did, counted by route and outcome, declared where TorchServe reads them."""

import json
import re
import time

import yaml
from test_limits import INFO, nw_model

from handlers import metrics
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
    def broken(text):
        raise RuntimeError("metrics backend gone")

    sink = MetricsSink(write=broken, flush_seconds=60)
    figures = batch_figures([], [], "1", 0.0)
    sink.emit(Cache(), figures)
    sink.emit(Cache(), figures)
    sink.flush()
    assert sink.failed and sum("metrics backend gone" in r.getMessage() for r in caplog.records) == 1


class Cache:
    model_name = "nw-sine"


# The frontend's pattern for a backend metric line (TorchServe 0.12, Metric.java), after its "[METRICS]" prefix.
FRONTEND_LINE = re.compile(
    r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?\|#hostname:([^,]+),([^,]+)(,(.*))?"
)


def parsed(texts: list[str]) -> list[tuple[str, str, float, dict]]:
    """(name, type, value, dimensions) of every line written, read as the frontend reads them."""
    out = []
    for line in "\n".join(texts).splitlines():
        assert line.startswith("[METRICS]"), line
        match = FRONTEND_LINE.fullmatch(line.removeprefix("[METRICS]"))
        assert match, line
        dimensions = dict(pair.split(":") for pair in match.group(4).split(","))
        out.append((match.group(1), match.group(6), float(match.group(3)), dimensions))
    return out


def test_batches_figures_go_out_together_at_the_flush_in_the_frontends_line_format():
    """Each histogram observation a line, each counter summed over the batches, all in one write."""
    limits = Limits()
    adapter = adapter_for(nw_model(), limits)
    written: list[str] = []
    sink = MetricsSink(write=written.append, flush_seconds=60)
    for bodies in ([{"instances": [1.0, 2.0]}, {"instances": ["x"]}], [{"instances": [3.0]}]):
        raw = [json.dumps(b).encode() for b in bodies]
        answers = answer_batch(raw, [False] * len(raw), adapter, limits, INFO)
        sink.emit(Cache(), batch_figures(answers, [False] * len(raw), "7", 0.004))
    assert written == []  # held until the flush
    sink.flush()
    assert len(written) == 1
    lines = parsed(written)
    histograms = [(name, value) for name, kind, value, _ in lines if kind == "HISTOGRAM"]
    assert [name for name, _ in histograms] == [BATCH_REQUESTS, HANDLER_MS, BATCH_MMAC] * 2  # one per batch
    assert [value for name, value in histograms if name == BATCH_REQUESTS] == [2, 1]
    assert all(d["ModelName"] == "nw-sine" and d["Level"] == "Model" for *_, d in lines)
    assert [list(d)[:-2] for name, _, _, d in lines if name == BATCH_REQUESTS] == [DECLARED[BATCH_REQUESTS][2]] * 2
    counters = {
        (name, d["route"], d["outcome"]): value
        for name, kind, value, d in lines
        if kind == "COUNTER" and name in (REQUESTS, INSTANCES)
    }
    assert counters == {
        (REQUESTS, "predictions", "answered"): 2,
        (INSTANCES, "predictions", "answered"): 3,
        (REQUESTS, "predictions", "invalid instance"): 1,
        (INSTANCES, "predictions", "invalid instance"): 0,
    }  # summed over both batches, one line each
    written.clear()
    sink.flush()
    assert written == []  # nothing measured since


def test_held_figures_go_out_early_when_many_wait(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_HELD_LINES", 6)
    written: list[str] = []
    sink = MetricsSink(write=written.append, flush_seconds=60)
    figures = batch_figures([], [], "1", 0.001)  # three histogram observations
    sink.emit(Cache(), figures)
    assert written == []
    sink.emit(Cache(), figures)
    assert len(parsed(written)) == 6


def test_figures_go_out_on_their_own_shortly_after_the_last_batch():
    limits = Limits()
    adapter = adapter_for(nw_model(), limits)
    written: list[str] = []
    sink = MetricsSink(write=written.append, flush_seconds=0.05)
    answers = answer_batch([b'{"instances": [1.0]}'], [False], adapter, limits, INFO)
    sink.emit(Cache(), batch_figures(answers, [False], "7", 0.001))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(REQUESTS in text for text in written):
        time.sleep(0.01)
    assert [value for name, _, value, _ in parsed(written) if name in (REQUESTS, BATCH_REQUESTS)] == [1, 1]


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
