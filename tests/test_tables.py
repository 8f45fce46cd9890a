"""A user's file as a data set: what is accepted, how it is split, and every refusal naming its column."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from handlers.contract import Limits
from handlers.errors import RequestError
from handlers.tabular import TabularAdapter
from training.data import tables
from training.data.datasets import prepare_model
from training.data.tables import TableError, TableSpec, default_name, load_file_dataset
from training.nn import NadarayaWatson, NWConfig, build_model
from training.nn.integrity import file_sha256
from training.search.conclude import study_data
from training.search.space import suggest
from training.tracking.records import DataMismatchError, record_on_study


def table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return pd.DataFrame(
        {
            "age": 30 + 10 * x[:, 0],
            "bmi": 25 + 3 * x[:, 1],
            "city": rng.choice(["Lyon", "Paris"], n),
            "cost": 100 + 5 * x[:, 0],
            "smoker": np.where(x[:, 1] > 0, "yes", "no"),
        }
    )


def write(frame: pd.DataFrame, path) -> str:
    if str(path).endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def load(frame, tmp_path, name="data.csv", **spec):
    return load_file_dataset(TableSpec(write(frame, tmp_path / name), **spec))


def test_numeric_columns_are_the_default_features_and_categoricals_are_left_out(tmp_path):
    data = load(table(), tmp_path, target="cost")
    assert data.features == ("age", "bmi") and data.skipped == ("city", "smoker")
    assert data.task == "regression" and data.in_features == 2
    assert [len(data.rows[s]) for s in ("train", "val", "test")] == [24, 8, 8]
    every = sorted(data.rows["train"] + data.rows["val"] + data.rows["test"])
    assert every == list(range(40))  # each file row in exactly one split
    frame = table()
    assert data.train.x[0].tolist() == pytest.approx(frame.loc[data.rows["train"][0], ["age", "bmi"]].tolist())


def test_splits_are_seeded_and_a_parquet_file_reads_like_the_csv(tmp_path):
    csv = load(table(), tmp_path, target="cost")
    parquet = load(table(), tmp_path, name="data.parquet", target="cost")
    assert csv.rows == parquet.rows and csv.splits_digest() == parquet.splits_digest()
    assert torch.equal(csv.train.x, parquet.train.x) and torch.equal(csv.test.y, parquet.test.y)
    other = load_file_dataset(TableSpec(csv.source, "cost"), seed=1)
    assert other.rows != csv.rows


def test_a_label_target_is_classification_split_per_class(tmp_path):
    frame = table(60)
    data = load(frame, tmp_path, target="smoker", features=("age", "bmi"))
    assert data.task == "classification" and data.class_labels == ("no", "yes") and data.n_classes == 2
    for split in ("train", "val", "test"):
        labels = frame.loc[data.rows[split], "smoker"]
        share = (labels == "yes").mean()
        assert abs(share - (frame["smoker"] == "yes").mean()) < 0.15, split  # stratified


def bad_tables():
    frame = table()
    missing = frame.copy()
    missing.loc[[3, 17], "bmi"] = np.nan
    constant = frame.assign(ones=1.0)
    one_class = frame.assign(label="a")
    infinite = frame.copy()
    infinite.loc[5, "age"] = np.inf
    missing_target = frame.copy()
    missing_target.loc[9, "cost"] = np.nan
    return [
        (missing, {"target": "cost"}, ["'bmi'", "missing", "rows 3, 17"]),
        (frame, {"target": "cost", "features": ("age", "city")}, ["'city'", "not numeric", "encode"]),
        (constant, {"target": "cost"}, ["'ones'", "constant"]),
        (frame.head(8), {"target": "cost"}, ["8 rows", "at least 10"]),
        (frame, {"target": "price"}, ["unknown target column 'price'", "age, bmi, city, cost, smoker"]),
        (frame, {"target": "cost", "features": ("age", "weight")}, ["unknown feature column 'weight'"]),
        (one_class, {"target": "label", "features": ("age",)}, ["'label'", "one class"]),
        (infinite, {"target": "cost"}, ["'age'", "infinite", "row 5"]),
        (missing_target, {"target": "cost"}, ["'cost'", "missing", "row 9"]),
        (frame, {"target": "city", "task": "regression"}, ["'city'", "not numeric", "TASK=classification"]),
        (frame.assign(rare=["a"] * 38 + ["b"] * 2), {"target": "rare"}, ["'rare'", "'b'", "row 38, row 39"]),
        (frame, {"target": "cost", "features": ("cost",)}, ["'cost'", "target"]),
    ]


@pytest.mark.parametrize("frame, spec, words", bad_tables())
def test_bad_data_is_refused_naming_the_column_and_rows(tmp_path, frame, spec, words):
    with pytest.raises(TableError) as refused:
        load(frame, tmp_path, **spec)
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))


def test_files_that_cannot_be_read_are_named(tmp_path):
    with pytest.raises(TableError, match="no data file"):
        load_file_dataset(TableSpec(str(tmp_path / "nowhere.csv"), "y"))
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(TableError, match="csv or .parquet"):
        load_file_dataset(TableSpec(str(tmp_path / "data.json"), "y"))


def long_format(n: int = 20) -> pd.DataFrame:
    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        length = 3 + i % 4
        for t in reversed(range(length)):
            rows.append({"id": i, "step": t, "value": float(rng.uniform()), "flag": t % 2, "y": i % 2})
    return pd.DataFrame(rows)


def test_long_format_sequences_are_ordered_with_variable_lengths(tmp_path):
    frame = long_format()
    data = load(frame, tmp_path, target="y", id_column="id", order_column="step", task="classification")
    assert data.kind == "sequence" and data.features == ("value", "flag") and data.n_classes == 2
    i = data.rows["train"][0]
    position = data.rows["train"].index(i)
    steps = frame[frame["id"] == i].sort_values("step")
    n = int(data.train.lengths[position])
    assert n == len(steps) and data.train.x[position, :n, 0].tolist() == pytest.approx(steps["value"].tolist())
    assert set(data.train.lengths.tolist()) == {3, 4, 5, 6}


def test_long_format_refusals_name_the_sequence(tmp_path):
    frame = long_format()
    frame.loc[frame["id"] == 4, "y"] = [0, 1, 0]
    with pytest.raises(TableError, match="differs within sequence 4"):
        load(frame, tmp_path, target="y", id_column="id", order_column="step")
    frame = long_format()
    frame.loc[1, "step"] = frame.loc[0, "step"]
    with pytest.raises(TableError, match="sequence 0 repeats an 'step' value in rows 0, 1"):
        load(frame, tmp_path, target="y", id_column="id", order_column="step")
    with pytest.raises(TableError, match="ORDER="):
        load(long_format(), tmp_path, target="y", id_column="id")


def test_a_changed_file_is_refused_by_the_study_naming_both_digests(tmp_path):
    study = optuna.create_study(study_name="nw-data")
    first = load(table(), tmp_path, target="cost")
    record_on_study(study, first)
    record_on_study(study, load(table(), tmp_path, target="cost"))  # the same file continues
    assert study.user_attrs["data_sha256"] == first.digest
    changed = load(table(seed=1), tmp_path, target="cost")
    with pytest.raises(TableError) as refused:
        record_on_study(study, changed)
    assert first.digest in str(refused.value) and changed.digest in str(refused.value)
    assert "NAME=" in str(refused.value)
    with pytest.raises(TableError, match="features"):
        record_on_study(study, load(table(), tmp_path, target="cost", features=("age",)))


def test_a_worker_cannot_choose_the_file_a_conclusion_reads(tmp_path, monkeypatch):
    """The attack: a worker account writes a file's name into the attributes of a study tuned on a built-in set."""
    secret = write(table(), tmp_path / "secret.csv")
    parsed = []
    monkeypatch.setattr(tables, "read_table", parsed.append)  # what would parse it: never reached
    study = optuna.create_study(study_name="nw-sine")
    planted = {"data_file": secret, "data_target": "cost", "data_features": ["age"], "data_task": "regression"}
    for key, value in {"model": "nw", "dataset": "sine", "data_seed": 0, **planted}.items():
        study.set_user_attr(key, value)
    with pytest.raises(DataMismatchError) as refused:
        study_data(study)
    assert "built-in data set 'sine'" in str(refused.value) and secret in str(refused.value)
    with pytest.raises(DataMismatchError, match="built-in"):
        study_data(study, data_file=secret)  # nor when named on the command line
    study.set_user_attr("dataset", "")  # made to look like a file study: without the file's sha256...
    with pytest.raises(DataMismatchError, match="no sha256"):
        study_data(study)
    study.set_user_attr("data_sha256", "0" * 64)  # ...or with another one, nothing is read
    with pytest.raises(DataMismatchError) as refused:
        study_data(study)
    assert "0" * 64 in str(refused.value) and file_sha256(secret) in str(refused.value)
    assert not parsed


def test_a_conclusion_reads_the_file_named_on_its_command_line_when_its_sha256_is_recorded(tmp_path):
    study = optuna.create_study(study_name="nw-data")
    study.set_user_attr("dataset", "")
    record_on_study(study, load(table(), tmp_path, target="cost"))
    moved = tmp_path / "moved" / "data.csv"
    moved.parent.mkdir()
    (tmp_path / "data.csv").rename(moved)
    with pytest.raises(DataMismatchError, match="is not a file"):
        study_data(study)
    assert study_data(study, data_file=str(moved)).digest == study.user_attrs["data_sha256"]
    other = write(table(seed=1), tmp_path / "other.csv")
    with pytest.raises(DataMismatchError) as refused:
        study_data(study, data_file=other)
    assert study.user_attrs["data_sha256"] in str(refused.value) and file_sha256(other) in str(refused.value)
    with pytest.raises(DataMismatchError, match="built-in data set 'sine'"):
        built_in = optuna.create_study(study_name="nw-sine")
        built_in.set_user_attr("dataset", "sine")
        record_on_study(built_in, load(table(), tmp_path, target="cost"))  # a file tune never joins it


def test_default_names_come_from_the_file():
    assert default_name("nw", "data/House Prices.csv") == "nw-house-prices"
    assert default_name("mha", "/x/my_runs.v2.parquet") == "mha-my-runs-v2"


def nw_for(data, params) -> NadarayaWatson:
    setup = suggest("nw", optuna.trial.FixedTrial(params), data, epochs=1, seed=0, device="cpu")
    return prepare_model(build_model("nw", setup.model_config), data)


def test_nw_classification_returns_class_log_probabilities_fused_or_direct():
    torch.manual_seed(0)
    x, y = torch.randn(30, 2), torch.randint(0, 3, (30,))
    outs = []
    for fused in (True, False):
        model = NadarayaWatson(NWConfig(in_features=2, n_keys=30, n_classes=3, fused=fused, bandwidth=1.5))
        model.set_memory(x, y)
        outs.append(model(torch.randn(5, 2, generator=torch.Generator().manual_seed(1)))[0])
    assert outs[0].shape == (5, 3) and outs[0].exp().sum(-1).tolist() == pytest.approx([1.0] * 5, abs=1e-5)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_a_served_file_model_takes_named_features_and_names_training_rows(tmp_path):
    data = load(table(60), tmp_path, target="smoker", features=("age", "bmi"))
    model = nw_for(data, {"parametric": False, "bandwidth": 1.0})
    assert model.config.feature_names == ["age", "bmi"] and model.config.key_rows == data.rows["train"]
    adapter = TabularAdapter(model, Limits())
    x = adapter.parse([{"bmi": 31.0, "age": 50}, [50, 31.0]])
    assert [float(v) for v in x[0]] == [float(v) for v in x[1]] == [50.0, 31.0]
    (prediction, _), *_ = adapter.run([x], False, False, float("inf")).results
    assert prediction["label"] in ("no", "yes") and sum(prediction["probabilities"]) == pytest.approx(1.0)
    (explanation,) = adapter.run([x[:1]], True, False, float("inf")).results[0]
    frame = table(60)
    for key in explanation["top_keys"]:
        assert key["row"] in data.rows["train"] and frame.loc[key["row"], "smoker"] == key["value"]
    assert json.loads(adapter.example())["instances"][0].keys() == {"age", "bmi"}
    for instance, words in [
        ({"age": 50}, ["missing feature", "'bmi'"]),
        ({"age": 50, "bmi": 1, "city": 2}, ["unknown feature", '"city"']),
        ({"age": 50, "bmi": None}, ["invalid instance", "['bmi']"]),
        ({"age": 1e12, "bmi": 20}, ["out of range", "'age'"]),
    ]:
        with pytest.raises(RequestError) as refused:
            adapter.parse([instance])
        assert all(w in f"{refused.value.error} {refused.value.detail}" for w in words), refused.value


def test_a_parametric_nw_classifier_trains_on_a_file(tmp_path):
    from training.fit.loop import evaluate, fit

    rng = np.random.default_rng(0)
    label = np.repeat(["a", "b", "c"], 30)
    frame = pd.DataFrame({"u": np.repeat([0.0, 3.0, 6.0], 30) + rng.normal(0, 0.5, 90), "v": rng.normal(size=90)})
    data = load(frame.assign(kind=label), tmp_path, target="kind")
    params = {"parametric": True, "bandwidth": 1.0, "metric": "per_feature", "optimizer": "adamw", "lr": 0.1}
    params |= {"batch_size": 16, "weight_decay": 1e-4}
    setup = suggest("nw", optuna.trial.FixedTrial(params), data, epochs=3, seed=0, device="cpu")
    model = prepare_model(build_model("nw", setup.model_config), data)
    result = fit(model, data, setup.fit_config)
    assert len(result.history) == 3 and all(np.isfinite(row["train_loss"]) for row in result.history)
    assert evaluate(model, data.test, "classification")["accuracy"] > 0.8


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "mha"}, "takes sequence data"),
        ({"model": "nw", "id_column": "city", "order_column": "age"}, "takes tabular data"),
        ({"study_name": "my model"}, "NAME 'my model'"),
        ({"target": None}, "TARGET="),
    ],
)
def test_tune_refuses_a_file_request_before_reading_it(tmp_path, overrides, message):
    from training.search.options import TuneOptions

    options = TuneOptions(**{"model": "nw", "data": write(table(), tmp_path / "d.csv"), "target": "cost", **overrides})
    assert TuneOptions(model="nw", data="x/House Prices.csv", target="y").name == "nw-house-prices"
    with pytest.raises(TableError, match=message):
        options.validate()


def test_a_served_sequence_model_takes_steps_by_name_and_answers_file_labels():
    from handlers.sequences import SequenceAdapter
    from training.nn import SequenceConfig, SequenceModel

    config = SequenceConfig(in_features=2, out_features=2, task="classification", d_model=8, n_heads=2, n_layers=1)
    config.feature_names, config.class_labels = ["value", "flag"], ["low", "high"]
    adapter = SequenceAdapter(SequenceModel(config), Limits())
    named = adapter.parse([[{"flag": 1, "value": 0.5}, {"value": 0.2, "flag": 0}]])
    assert named[0].tolist() == [[0.5, 1.0], [0.2, 0.0]]
    (answer,) = adapter.run([named], False, False, float("inf")).results[0]
    assert answer["label"] in ("low", "high")
    with pytest.raises(RequestError, match=r"instances\[0\]\[1\] lacks feature 'flag'"):
        adapter.parse([[{"flag": 1, "value": 0.5}, {"value": 0.2}]])


def test_what_explanations_reveal_of_the_training_rows_is_a_setting(tmp_path):
    data = load(table(60), tmp_path, target="cost", features=("age", "bmi"))
    model = nw_for(data, {"parametric": False, "bandwidth": 1.0, "trend": False})
    answers = {}
    for revealed in ("values", "index", "none"):
        adapter = TabularAdapter(model, Limits(explain_keys=revealed))
        (answers[revealed],) = adapter.run([adapter.parse([[50, 31.0]])], True, False, float("inf")).results[0]
        assert answers[revealed]["revealed"] == revealed
    frame, values = table(60), answers["values"]
    assert all(frame.loc[k["row"], "cost"] == pytest.approx(k["value"], rel=1e-5) for k in values["top_keys"])
    index = answers["index"]
    assert "weights" not in index and all(set(k) == {"index", "row"} for k in index["top_keys"])
    assert [k["row"] for k in index["top_keys"]] == [k["row"] for k in values["top_keys"]]
    assert set(answers["none"]) == {"prediction", "revealed"}
    assert answers["none"]["prediction"] == values["prediction"] == index["prediction"]
    with pytest.raises(ValueError, match="explain_keys is 'rows'; expected one of values, index, none"):
        Limits(explain_keys="rows")
