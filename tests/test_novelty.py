"""Novelty: each model's own measure of how unfamiliar an input is, the same in training (the reference a
registered model carries) and in serving (the scores behind the handler's novelty metrics)."""

import json

import pytest
import torch
from test_handler import MockContext, make_model_dir
from test_limits import INFO, mha_model, nw_model

from handlers.answers import NoveltyScores
from handlers.attention_handler import AttentionHandler
from handlers.contract import Limits, adapter_for, answer_batch
from handlers.metrics import BEYOND_RANGE, NOVELTY, batch_figures
from handlers.oip import answer_any
from handlers.oip_kinds import oip_kind
from training.data import dates
from training.data.datasets import Split
from training.fit.novelty_reference import novelty_reference, novelty_scores
from training.nn import NWConfig, build_model, novelty
from training.nn.seq2seq import pad_batch, source_ids


def served_scores(model, instances: list) -> list[float]:
    limits = Limits()
    body = json.dumps({"instances": instances}).encode()
    (answer,) = answer_batch([body], [False], adapter_for(model, limits), limits, INFO)
    assert answer.status == 200, answer.body
    return answer.novelty


def test_bands_follow_the_reference_quantiles_and_scores_past_it_are_beyond():
    reference = novelty.reference(torch.arange(1000, dtype=torch.float64))
    assert len(reference) == novelty.REFERENCE_POINTS and reference[0] == 0 and reference[-1] == 999
    assert novelty.quantile_of(499.5, reference) == pytest.approx(0.5)
    counts = novelty.count_bands([float(s) for s in range(1000)] + [1e9, float("nan")], reference)
    assert counts == {"0-0.5": 500, "0.5-0.75": 250, "0.75-0.9": 150, "0.9-0.99": 90, "0.99-1": 10, "beyond": 2}
    assert novelty.count_bands([1.0], []) == {}  # a model without a reference reports no bands


def test_nw_novelty_is_the_distance_to_the_nearest_key_in_bandwidths():
    model = build_model("nw", NWConfig(in_features=2, n_keys=30, bandwidth=0.7)).eval()
    torch.manual_seed(1)
    model.x_scaler.fit(torch.randn(30, 2) * 3)
    model.set_memory(torch.randn(30, 2) * 3, torch.randn(30))
    x = torch.tensor([[0.1, 0.2], [40.0, -40.0]])
    z = model.x_scaler(x)[:, None, :] - model.keys[None]  # (Q, K, D) standardized differences
    expected = (z * model.w).norm(dim=-1).min(-1).values
    assert torch.allclose(model.nearest_key_distance(x), expected)
    near, far = model.nearest_key_distance(x).tolist()
    assert far > 10 * near


@pytest.mark.parametrize("kind", ["nw", "nw-classes", "mha-regression", "mha-classes", "s2s"])
def test_the_handler_scores_every_kind_as_its_training_reference_does(kind, tmp_path):
    """The reference's scores (training) and the answers' scores (serving) are one computation."""
    if kind == "nw":
        model, instances = nw_model(), [[0.3], [2.5], [9.0]]
        split = Split(torch.tensor(instances), torch.zeros(3))
    elif kind == "nw-classes":
        model = build_model("nw", NWConfig(in_features=1, n_keys=20, bandwidth=2.0, n_classes=3)).eval()
        model.set_memory(torch.linspace(0, 5, 20), torch.arange(20) % 3)
        instances = [[0.3], [2.5]]
        split = Split(torch.tensor(instances), torch.zeros(2))
    elif kind.startswith("mha"):
        model = mha_model(task="classification", out_features=3) if kind == "mha-classes" else mha_model()
        sequences = [[[0.5, 1.0], [0.2, 0.0], [0.9, 1.0]], [[0.1, 0.0]]]
        padded = torch.tensor([sequences[0], [[0.1, 0.0], [0.0, 0.0], [0.0, 0.0]]])
        model, instances, split = model, sequences, Split(padded, torch.zeros(2), torch.tensor([3, 1]))
    else:
        model = make_model_dir(tmp_path, "s2s")
        instances = ["5 April 2023", "Dec 1, 1999"]
        x, lengths = pad_batch([source_ids(t, dates.SOURCE_CHARS) for t in instances])
        split = Split(x, torch.zeros(2), lengths)
    served = served_scores(model, instances)
    assert served == pytest.approx(novelty_scores(model, split).tolist(), rel=1e-5, abs=1e-7)
    assert all(s >= 0 for s in served)
    if kind != "nw":
        assert all(s <= 1 + 1e-9 for s in served) or kind == "s2s"  # entropies are normalized to [0, 1]


def test_far_queries_are_counted_beyond_the_reference_and_the_training_range():
    """Through either protocol: an OIP request's instances are counted as a contract request's are."""
    model = nw_model()
    reference = novelty_reference(model, Split(torch.linspace(0, 5, 41), torch.zeros(41)))
    limits = Limits()
    adapter = adapter_for(model, limits)
    far = {"name": "features", "datatype": "FP32", "shape": [3, 1], "data": [60.0, -40.0, 1.5]}
    bodies = [
        json.dumps({"instances": [1.0, 2.0]}).encode(),
        json.dumps({"instances": [50.0, -30.0]}).encode(),
        json.dumps({"inputs": [far]}).encode(),
    ]
    answers, explained = answer_any(bodies, [False] * 3, adapter, oip_kind(adapter), limits, INFO)
    assert [a.status for a in answers] == [200] * 3 and answers[2].protocol == "oip"
    figures = {
        (f.name, f.dimensions.get("band")): f.value for f in batch_figures(answers, explained, "1", 0, reference)
    }
    assert figures[(NOVELTY, "beyond")] == 4 and figures[(BEYOND_RANGE, None)] == 4
    assert sum(v for (name, _), v in figures.items() if name == NOVELTY) == 7


def test_a_failure_to_score_novelty_is_logged_once_and_the_answer_goes_out(monkeypatch, caplog, tmp_path):
    make_model_dir(tmp_path, "nw")
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))

    def broken(x):
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(handler.adapter.model, "nearest_key_distance", broken)
    monkeypatch.setattr(NoveltyScores, "failed", False)  # log-once is per worker: start this one afresh
    for _ in range(2):
        (body,) = handler.handle([{"body": b'{"instances": [1.0]}'}], MockContext(tmp_path))
        assert "predictions" in json.loads(body)
    assert sum("scoring broke" in r.getMessage() for r in caplog.records) == 1


def test_the_metrics_switch_must_be_true_or_false():
    assert Limits.from_options({"metrics": "false"}).metrics is False
    assert Limits.from_options({"metrics": True}).metrics is True
    with pytest.raises(ValueError, match="metrics is 'off'"):
        Limits.from_options({"metrics": "off"})
