"""What NW explanations and refusals reveal of the training rows under each `explain_keys` setting, measured by the
attacks in tests/attacks.py on the handler in process (the served attack: tests/test_tables_e2e.py)."""

import json

import numpy as np
import pytest
import torch
from attacks import invert_weights, place_by_ranks

from handlers.contract import Limits, answer_batch
from handlers.errors import RequestError
from handlers.tabular import TabularAdapter
from training.nn import NadarayaWatson, NWConfig


def patients(n: int = 30, trend: bool = False) -> NadarayaWatson:
    """A 2-feature NW model of `n` rows (a fixed Gaussian bandwidth over standardized features), as from a file."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(n, 2)) * [10, 3] + [30, 25])  # age, bmi
    y = 100 + 0.5 * (x[:, 0] - 30) + torch.tensor(rng.normal(size=n))  # cost
    config = NWConfig(in_features=2, n_keys=n, learn_bandwidth=False, bandwidth=1.0, trend=trend)
    config.feature_names, config.key_rows = ["age", "bmi"], list(range(100, 100 + n))
    model = NadarayaWatson(config).double()
    model.x_scaler.fit(x)
    model.y_scaler.fit(y)
    model.set_memory(x, y, rows=config.key_rows)
    return model


def explain(model: NadarayaWatson, revealed: str, queries: list) -> list[dict]:
    adapter = TabularAdapter(model, Limits(explain_keys=revealed))
    return adapter.run([adapter.parse(queries)], True, False, float("inf")).results[0]


def test_index_explanations_name_the_top_rows_in_rank_order_and_carry_no_number_but_the_prediction():
    model = patients(trend=True)
    (values,), (index,), (none,) = (explain(model, setting, [[31.0, 24.0]]) for setting in ("values", "index", "none"))
    assert set(index) == {"prediction", "top_keys", "revealed"} and index["prediction"] == values["prediction"]
    assert index["top_keys"] == [{"index": k["index"], "row": k["row"]} for k in values["top_keys"]]
    assert [k["weight"] for k in values["top_keys"]] == sorted(values["weights"], reverse=True)[:5]
    assert set(none) == {"prediction", "revealed"}  # no row identity, and no trend term (a second fitted number)


def test_an_explanation_is_priced_by_what_its_setting_lets_it_carry():
    model = patients(200)
    body = json.dumps({"instances": [[31.0, 24.0]] * 50}).encode()
    for revealed in ("values", "index", "none"):
        limits = Limits(explain_keys=revealed)
        adapter = TabularAdapter(model, limits)
        (answer,) = answer_batch([body], [True], adapter, limits, {"name": "t"})
        priced = adapter.cost(adapter.parse([[31.0, 24.0]] * 50), explain=True, heads=False).response_bytes
        assert len(answer.body) <= priced < 4 * len(answer.body) + 2_000, revealed


def test_weight_inversion_recovers_every_row_from_values_and_nothing_from_index():
    model = patients()
    keys = model.x_scaler.inverse(model.keys).numpy()  # (K, D)
    mean, std = keys.mean(0), keys.std(0)
    axis = np.linspace(-2.5, 2.5, 30)
    queries = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2) * std + mean  # (900, 2)
    for revealed, placed in (("values", 30), ("index", 0)):
        found, _ = invert_weights(queries, explain(model, revealed, queries.tolist()), len(keys))
        error = np.nan_to_num(np.abs(found - keys) / std, nan=np.inf).max(-1)  # (K,) in standard deviations
        assert (error < 0.1).sum() == placed, revealed


def test_rank_tracing_places_a_row_within_a_tenth_of_a_std_from_one_request_of_ranks():
    """The number docs/security.md states: 145 queries (a 12 x 12 grid and its centre) per row."""
    model = patients()
    keys = model.x_scaler.inverse(model.keys).numpy()
    mean, std = keys.mean(0), keys.std(0)

    def ranks(z: np.ndarray) -> list[list[int]]:  # standardized queries -> each one's top keys, most attended first
        return [[k["index"] for k in e["top_keys"]] for e in explain(model, "index", (z * std + mean).tolist())]

    errors = []
    for centre in np.random.default_rng(1).normal(size=(10, 2)):
        row, place = place_by_ranks(ranks, centre, side=12)
        errors.append(np.abs(place - (keys[row] - mean) / std).max())
    assert max(errors) < 0.1, errors  # docs/security.md: median 0.04, worst 0.08


@pytest.mark.parametrize("revealed", ["index", "none"])
def test_a_range_refusal_names_the_rule_not_the_data_statistics_unless_values_are_revealed(revealed):
    model = patients()
    for setting, states_numbers in (("values", True), (revealed, False)):
        adapter = TabularAdapter(model, Limits(explain_keys=setting))
        with pytest.raises(RequestError, match="number out of range") as refused:
            adapter.parse([[31.0, 24.0], {"age": 30.0, "bmi": 1e12}])
        detail = refused.value.body()["detail"]
        low, high = adapter.bounds.low[1].item(), adapter.bounds.high[1].item()
        assert detail.startswith("instances[1] feature 'bmi' is 1e+12")
        assert (f"{low:.6g}" in detail and f"{high:.6g}" in detail) == states_numbers, detail
        if not states_numbers:
            assert detail.endswith("more than 1e+06 standard deviations from the training data's mean")
