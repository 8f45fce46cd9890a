"""End to end on a user's own files: CSV and Parquet tables and a long-format sequence file, each tuned
briefly in real stores, archived from the registry, served by a real TorchServe and queried by feature name."""

import hashlib
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from attacks import invert_weights
from mlflow import MlflowClient

from handlers.types import Limits
from training.data.tables import TableError
from training.search.options import TuneOptions
from training.search.study import enqueue_trial, tune
from training.serving import serve
from training.serving.archive import MODEL_CONFIG, archive_champion, archive_champions
from training.serving.serve import free_ports

pytestmark = pytest.mark.e2e


def house_prices(n: int = 80) -> pd.DataFrame:
    """Regression, with a categorical column that the default features leave out."""
    rng = np.random.default_rng(0)
    area, rooms = rng.uniform(40, 200, n), rng.integers(1, 6, n)
    city = rng.choice(["Lyon", "Paris", "Nice"], n)
    return pd.DataFrame({"area": area, "rooms": rooms, "city": city, "price": 3 * area + 20 * rooms})


def flowers(n: int = 90) -> pd.DataFrame:
    """Classification with string labels."""
    rng = np.random.default_rng(1)
    label = np.repeat(["setosa", "versicolor", "virginica"], n // 3)
    centre = {"setosa": 1.0, "versicolor": 4.0, "virginica": 7.0}
    petal = np.array([centre[v] for v in label]) + rng.normal(0, 0.5, n)
    return pd.DataFrame({"petal": petal, "sepal": rng.normal(5, 1, n), "species": label})


def patients(n: int = 30) -> pd.DataFrame:
    """30 rows of 2 features: the weight-inversion attack's target (a private file)."""
    rng = np.random.default_rng(3)
    age, bmi = rng.normal(45, 12, n), rng.normal(26, 4, n)
    return pd.DataFrame({"age": age, "bmi": bmi, "cost": 1000 + 20 * age + rng.normal(0, 50, n)})


def marked_sums(n: int = 60) -> pd.DataFrame:
    """Long format: one row per step, variable lengths, one target per sequence (the adding problem)."""
    rng, rows = np.random.default_rng(2), []
    for sequence in range(n):
        length = int(rng.integers(4, 9))
        values, marked = rng.uniform(0, 1, length), rng.choice(length, 2, replace=False)
        total = float(values[marked].sum())
        for step in rng.permutation(length):  # steps out of order in the file: ORDER sorts them
            rows.append({"seq": f"s{sequence}", "t": int(step), "value": values[step], "marker": int(step in marked)})
            rows[-1]["total"] = total
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    stores = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "storage": f"sqlite:///{root / 'optuna.db'}"}
    house_prices().to_csv(root / "house_prices.csv", index=False)
    flowers().to_parquet(root / "flowers.parquet")
    marked_sums().to_csv(root / "marked.csv", index=False)
    patients().to_csv(root / "patients.csv", index=False)
    brief = {"trials": 2, "epochs": 2, "progress": False, **stores}
    private = TuneOptions(model="nw", data=str(root / "patients.csv"), target="cost", **{**brief, "trials": 1})
    enqueue_trial(private, "minimize", {"parametric": False, "bandwidth": 1.0, "trend": False})  # a known kernel
    results = {
        "houses": tune(TuneOptions(model="nw", data=str(root / "house_prices.csv"), target="price", **brief)),
        "flowers": tune(TuneOptions(model="nw", data=str(root / "flowers.parquet"), target="species", **brief)),
        "marked": tune(
            TuneOptions(
                model="mha",
                data=str(root / "marked.csv"),
                target="total",
                id_column="seq",
                order_column="t",
                study_name="mha-marked",
                **brief,
            )
        ),
        "patients": tune(private),
    }
    archive_champions(out_dir=root / "archives", tracking_uri=stores["tracking_uri"])
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    values = {"archive_name": "nw-patients-values", "explain_keys": "values"}  # the same model, its rows revealed
    archive_champion(client, "nw-patients", root / "archives", MODEL_CONFIG, **values)
    uri = stores["tracking_uri"]
    server = serve.start(
        run_dir=root / "run", model_store=root / "archives", ports=free_ports(), quiet=True, tracking_uri=uri
    )
    yield server, root, stores, results
    serve.stop(server.run_dir, quiet=True)


def test_names_follow_the_file_and_runs_record_it(served):
    server, root, stores, results = served
    files = ["mha-marked", "nw-flowers", "nw-house-prices", "nw-patients"]
    assert sorted(server.models()) == [*files, "nw-patients-values"]  # and a values archive of nw-patients
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    run = client.get_run(results["houses"].parent_run_id)
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.source_type == "local" and "house_prices.csv" in dataset.source
    assert all(f'"{column}"' in dataset.schema for column in ("area", "rooms", "city", "price"))
    assert json.loads(dataset.profile)["num_rows"] == 80
    tags = {t.key: t.value for t in run.inputs.dataset_inputs[0].tags}
    assert tags["train_rows"] == "48" and tags["val_rows"] == "16" and tags["test_rows"] == "16"
    assert tags["protocol"] == "cv5" and tags["fit_rows"] == "64", "80 rows: cross-validated, refit on train+val"
    mlflow.set_tracking_uri(stores["tracking_uri"])
    info = mlflow.models.get_model_info("models:/nw-house-prices@champion")
    assert info.signature.inputs.input_names() == ["area", "rooms"]  # the categorical city is left out


def test_tabular_models_answer_by_feature_name_and_explain_by_file_row(served):
    server, root, stores, _ = served
    homes = [{"area": 120.0, "rooms": 3}, {"rooms": 1, "area": 50.0}]
    status, body, _ = server.predict("nw-house-prices", homes)
    assert status == 200
    positional = server.predict("nw-house-prices", [[120.0, 3], [50.0, 1]])[1]["predictions"]
    assert body["predictions"] == pytest.approx(positional) and body["predictions"][0] > body["predictions"][1]

    status, body, _ = server.predict("nw-house-prices", homes[:1], explain=True)
    file = pd.read_csv(root / "house_prices.csv")
    (explanation,) = body["explanations"]
    assert explanation["revealed"] == "index"  # a user's file: rows named by number, their values kept back
    for key in explanation["top_keys"]:
        assert set(key) == {"index", "row"} and 0 <= key["row"] < len(file)

    status, body, _ = server.predict("nw-flowers", [{"petal": 1.0, "sepal": 5.0}, {"petal": 7.1, "sepal": 5.0}])
    assert status == 200
    assert [p["label"] for p in body["predictions"]] == ["setosa", "virginica"]
    assert sum(body["predictions"][0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_weight_inversion_gives_back_the_rows_of_a_values_archive_and_nothing_of_an_index_one(served):
    """The attack of tests/attacks.py, with as many chosen queries as ten requests may hold, on both archives of
    one model of a private file: values gives back every training input, index none within a tenth of a std."""
    server, *_ = served
    file, features = patients(), ["age", "bmi"]
    per_request = Limits().max_instances
    axis = np.linspace(-2.5, 2.5, int(np.sqrt(10 * per_request)))  # a grid over the features' plausible range
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)  # (Q, 2), Q <= 10 requests
    queries = grid * file[features].std().values + file[features].mean().values
    answers = {}
    for name in ("nw-patients-values", "nw-patients"):
        answers[name] = []
        for start in range(0, len(queries), per_request):
            status, body, _ = server.predict(name, queries[start : start + per_request].tolist(), explain=True)
            assert status == 200, body
            answers[name] += body["explanations"]
    row_of = {k["index"]: k["row"] for a in answers["nw-patients-values"] for k in a["top_keys"]}  # the truth
    truth = file.loc[[row_of[i] for i in range(len(row_of))]]
    std = file[features].std().values
    for name, recovered in (("nw-patients-values", len(truth)), ("nw-patients", 0)):
        keys, targets = invert_weights(queries, answers[name], n_keys=len(truth))
        error = np.nan_to_num(np.abs(keys - truth[features].values) / std, nan=np.inf).max(-1)  # (K,) in stds
        target_error = np.nan_to_num(np.abs(targets - truth["cost"].values), nan=np.inf) / file["cost"].std()
        assert (error < 0.1).sum() == (target_error < 0.1).sum() == recovered, (name, error, target_error)


def test_named_feature_errors_name_the_feature(served):
    server, *_ = served
    for instance, error, name in [
        ({"area": 100.0}, "missing feature", "rooms"),
        ({"area": 100.0, "rooms": 2, "city": 3}, "unknown feature", "city"),
        ({"area": "big", "rooms": 2}, "invalid instance", "area"),
    ]:
        status, body, _ = server.predict("nw-house-prices", [instance])
        assert status == 400 and body["error"] == error and name in body["detail"], body
    assert server.predict("nw-house-prices", [{"area": 1.0, "rooms": 1}])[0] == 200


def test_sequences_answer_with_steps_by_feature_name(served):
    server, *_ = served
    steps = [{"value": 0.4, "marker": 1}, {"value": 0.9, "marker": 0}, {"value": 0.3, "marker": 1}]
    status, body, _ = server.predict("mha-marked", [steps, steps[:2]])
    assert status == 200 and len(body["predictions"]) == 2
    positional = server.predict("mha-marked", [[[0.4, 1], [0.9, 0], [0.3, 1]], [[0.4, 1], [0.9, 0]]])[1]
    assert body["predictions"] == pytest.approx(positional["predictions"])
    status, body, _ = server.predict("mha-marked", [[{"value": 0.4}]])
    assert status == 400 and "marker" in body["detail"]


def test_a_changed_file_under_the_same_name_is_refused_with_both_digests(served):
    _, root, stores, results = served
    changed = house_prices()
    changed.loc[0, "price"] += 1
    changed.to_csv(root / "house_prices.csv", index=False)
    options = TuneOptions(model="nw", data=str(root / "house_prices.csv"), target="price", trials=1, **stores)
    with pytest.raises(TableError, match="NAME=") as refused:
        tune(options)
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    old = {t.key: t.value for t in client.get_run(results["houses"].parent_run_id).inputs.dataset_inputs[0].tags}
    new = hashlib.sha256((root / "house_prices.csv").read_bytes()).hexdigest()
    assert old["sha256"] in str(refused.value) and new in str(refused.value) and old["sha256"] != new
    assert len(client.search_runs([results["houses"].experiment_id])) == 3  # parent + 2 trials: nothing new


def test_a_file_with_a_missing_value_is_refused_before_any_study_starts(served):
    _, root, stores, _ = served
    frame = house_prices()
    frame.loc[7, "area"] = None
    frame.to_csv(root / "gaps.csv", index=False)
    options = TuneOptions(model="nw", data=str(root / "gaps.csv"), target="price", trials=1, progress=False, **stores)
    with pytest.raises(TableError, match="column 'area' has missing values in row 7"):
        tune(options)
    assert MlflowClient(stores["tracking_uri"], stores["tracking_uri"]).get_experiment_by_name("nw-gaps") is None
