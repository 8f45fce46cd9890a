"""The contract's cost budget and hostile inputs, in-process (the findings of issue 8 as regression tests)."""

import json
import math

import pytest
import torch

from handlers.contract import Limits, adapter_for, agrees, answer_batch, render_result
from training.nn import NWConfig, SequenceConfig, build_model, save_checkpoint
from training.nn.integrity import ArchiveIntegrityError, verified_checkpoint

INFO = {"name": "toy", "version": "1", "run_id": "r"}
VALID_SEQUENCE = [[0.5, 1.0], [0.2, 0.0], [0.9, 1.0]]


def nw_model(bandwidth=2.0, trend=False):
    torch.manual_seed(0)
    model = build_model("nw", NWConfig(in_features=1, n_keys=20, bandwidth=bandwidth, trend=trend))
    model.set_memory(torch.linspace(0, 5, 20), torch.sin(torch.linspace(0, 5, 20)))
    return model.eval()


def mha_model(**overrides):
    torch.manual_seed(0)
    config = dict(in_features=2, d_model=16, n_heads=2, n_layers=2) | overrides
    return build_model("mha", SequenceConfig(**config)).eval()


def ask(model, bodies, limits=None, explain=False):
    limits = limits or Limits()
    adapter = adapter_for(model, limits)
    raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    answers = answer_batch(raw, [explain] * len(raw), adapter, limits, INFO)
    for answer in answers:  # strict JSON, always
        json.loads(answer.body, parse_constant=lambda c: pytest.fail(f"{c} in a response body"))
    return answers


def status_and_error(answer):
    body = json.loads(answer.body)
    return answer.status, body.get("error")


def test_head_weights_over_the_response_budget_are_a_413_naming_it_and_the_batch_goes_on():
    long_sequence = [[0.5, float(t in (3, 7))] for t in range(200)]
    heads = {"instances": [long_sequence], "heads": True}
    answers = ask(mha_model(), [heads, {"instances": [VALID_SEQUENCE]}], Limits(max_response_bytes=500_000), True)
    assert status_and_error(answers[0]) == (413, "response too large")
    assert "500,000" in json.loads(answers[0].body)["detail"] and "per-head" in json.loads(answers[0].body)["detail"]
    assert answers[1].status == 200
    without_heads = ask(mha_model(), [{"instances": [long_sequence]}], Limits(max_response_bytes=500_000), True)
    assert without_heads[0].status == 200
    assert "head_weights" not in json.loads(without_heads[0].body)["explanations"][0]


def test_pooling_explanations_do_not_build_head_weights():
    model = mha_model()
    x, lengths = torch.rand(2, 5, 2), torch.tensor([5, 3])
    out, weights = model(x, lengths, need_weights=True, head_weights=False)
    assert weights["heads"] is None and torch.allclose(out, model(x, lengths)[0], atol=1e-6)
    assert torch.allclose(weights["pooling"], model(x, lengths, need_weights=True)[1]["pooling"], atol=1e-6)


def test_a_request_over_the_compute_budget_is_a_413_naming_the_budget():
    limits = Limits(max_request_mmac=5)
    long = [[0.1, 0.0]] * 1000
    (answer,) = ask(mha_model(), [{"instances": [long] * 8}], limits)
    assert status_and_error(answer) == (413, "request too costly")
    detail = json.loads(answer.body)["detail"]
    assert "at most 5 " in detail and "sequences of 1000 steps" in detail


def test_a_batch_takes_the_cheapest_requests_first_and_refuses_the_rest_with_retry_after():
    model = mha_model()
    adapter = adapter_for(model, Limits())
    large = {"instances": [[[0.1, 0.0]] * 400] * 4}
    one = adapter.cost(adapter.parse(large["instances"]), False, False).mmac
    limits = Limits(max_request_mmac=one * 1.01, max_batch_mmac=one * 2.5)
    small = {"instances": [VALID_SEQUENCE]}
    answers = ask(model, [large, small, large, large, small], limits)
    assert [a.status for a in answers].count(200) == 4 and answers[1].status == answers[4].status == 200
    refused = [a for a in answers if a.status == 503]
    assert len(refused) == 1 and refused[0].headers["Retry-After"] == "1"
    assert json.loads(refused[0].body)["error"] == "over capacity"


def test_a_batch_past_its_time_answers_503_instead_of_timing_out():
    (answer,) = ask(mha_model(), [{"instances": [VALID_SEQUENCE]}], Limits(batch_seconds=-1))
    assert status_and_error(answer) == (503, "over capacity")


def test_sequences_run_in_length_sorted_passes_and_match_one_at_a_time():
    model = mha_model()
    lengths = [3, 200, 5, 180, 4, 7]
    sequences = [[[(t % 7) / 7, float(t % 5 == 0)] for t in range(n)] for n in lengths]
    adapter = adapter_for(model, Limits(max_pass_mmac=2))
    passes = adapter.passes(sorted(lengths), heads=False)
    assert len(passes) > 1
    (batched,) = ask(model, [{"instances": sequences}], Limits(max_pass_mmac=2))
    singles = [json.loads(ask(model, [{"instances": [s]}])[0].body)["predictions"][0] for s in sequences]
    assert json.loads(batched.body)["predictions"] == pytest.approx(singles, abs=1e-5)


HOSTILE = [
    ('{"instances": [' + "9" * 400 + "]}", "number out of range"),
    ('{"instances": [' + "9" * 5000 + "]}", "invalid JSON"),
    ('{"instances": ' + "[" * 990 + "1" + "]" * 990 + "}", "invalid JSON"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
    ('{"instances": [1e308]}', "number out of range"),
    ('{"instances": [-1e39]}', "number out of range"),
    ('{"instances": [1e400]}', "non-finite number"),
    ('{"instances": [NaN]}', "non-finite number"),
    ('{"instances": [[' + "9" * 400 + "]]}", "number out of range"),
]


@pytest.mark.parametrize("body,error", HOSTILE)
def test_hostile_numbers_and_nesting_fail_alone_with_a_named_4xx(body, error):
    answers = ask(nw_model(), [{"instances": [1.0]}, body.encode(), {"instances": [2.0]}])
    assert [a.status for a in answers] == [200, 400, 200]
    assert json.loads(answers[1].body)["error"] == error


@pytest.mark.parametrize("route", [False, True])
def test_hostile_sequences_fail_alone_on_both_routes(route):
    bodies = [
        {"instances": [[[0.5, 10**400]]]},
        {"instances": [[[0.5, 1e308]]]},
        {"instances": [[[0.5, True]]]},
        '{"instances": [[[0.5, ' + "9" * 5000 + "]]]}",
        '{"instances": [[[0.5, 1], [0.5, NaN]]]}',
        {"instances": [[[0.5, 1], [0.5, [1]]]]},
        {"instances": [[[0.5, 1], [0.5]]]},
        {"instances": [VALID_SEQUENCE]},
    ]
    raw = [b.encode() if isinstance(b, str) else b for b in bodies]
    answers = ask(mha_model(), raw, explain=route)
    assert [a.status for a in answers] == [400] * 7 + [200]
    errors = [json.loads(a.body)["error"] for a in answers[:-1]]
    assert errors[2] == "invalid instance" and errors[4:] == [
        "non-finite number",
        "invalid instance",
        "wrong feature count",
    ]
    assert "instances[0][0]" in json.loads(answers[1].body)["detail"]
    assert "instances[0][1]" in json.loads(answers[4].body)["detail"]


@pytest.mark.parametrize("trend", [False, True])
def test_predictions_and_explanations_agree_over_the_whole_accepted_range(trend):
    model = nw_model(bandwidth=20.0, trend=trend)
    limit = Limits().max_abs_z
    xs = [-limit, -1e4, -3.0, 0.0, 2.5, 7.0, 1e3, 1e5, limit]
    (predicted,) = ask(model, [{"instances": xs}])
    (explained,) = ask(model, [{"instances": xs}], explain=True)
    predictions = json.loads(predicted.body)["predictions"]
    explanations = json.loads(explained.body)["explanations"]
    assert all(math.isfinite(p) for p in predictions)
    assert agrees(predictions, [e["prediction"] for e in explanations])  # the contract's tolerance
    assert all(sum(e["weights"]) == pytest.approx(1.0, abs=1e-5) for e in explanations)
    assert all(("trend" in e) == trend for e in explanations)
    assert explanations[-1]["top_keys"][0]["index"] == 19  # far right: the rightmost training point


def test_answers_are_strict_json_or_a_named_error():
    answer = render_result("predictions", [float("nan")], "{}", Limits())
    assert answer.status == 422 and json.loads(answer.body)["error"] == "non-finite result"
    big = render_result("predictions", [0.5] * 1000, "{}", Limits(max_response_bytes=100))
    assert big.status == 413
    fine = render_result("predictions", [0.5, 1], '{"name":"m"}', Limits())
    assert fine.status == 200 and json.loads(fine.body) == {"predictions": [0.5, 1], "model": {"name": "m"}}


def test_a_body_over_the_byte_budget_is_a_json_413():
    (answer,) = ask(nw_model(), [b'{"instances": [' + b"1.0," * 300 + b"1.0]}"], Limits(max_body_bytes=1000))
    assert status_and_error(answer) == (413, "body too large")


def test_a_tampered_checkpoint_is_refused_before_loading(tmp_path):
    sha = save_checkpoint(nw_model(), tmp_path / "checkpoint.pt")
    info = {"name": "toy", "version": "1", "sha256": sha}
    assert verified_checkpoint(str(tmp_path), "checkpoint.pt", info).endswith("checkpoint.pt")
    tampered = nw_model()
    with torch.no_grad():
        tampered.values.fill_(42.0)
    save_checkpoint(tampered, tmp_path / "checkpoint.pt")
    with pytest.raises(ArchiveIntegrityError, match="differs from model_info.json"):
        verified_checkpoint(str(tmp_path), "checkpoint.pt", info)


def test_a_tabular_pass_holds_as_many_rows_as_the_adapters_own_price_allows(monkeypatch):
    # With a trend, a row's price is K (3D + 3 + V) multiply-adds, V counting the trend's values: a pass holds 6
    # rows under this cap (a formula of its own, K (3D + 4), used to let 7 through, over the cap).
    limits = Limits(max_pass_mmac=0.00105)
    adapter = adapter_for(nw_model(trend=True), limits)
    sizes, real = [], adapter.model.forward

    def counting(x, **kwargs):
        sizes.append(len(x))
        return real(x, **kwargs)

    monkeypatch.setattr(adapter.model, "forward", counting)
    (answer,) = answer_batch([json.dumps({"instances": [1.0] * 20}).encode()], [True], adapter, limits, INFO)
    assert answer.status == 200 and len(json.loads(answer.body)["explanations"]) == 20
    per_row = adapter.cost([[1.0]], explain=True, heads=False).mmac
    assert sizes == [6, 6, 6, 2]
    assert max(sizes) * per_row <= limits.max_pass_mmac < (max(sizes) + 1) * per_row
