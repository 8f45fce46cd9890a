"""`make score`: a file scored with the registry's @champion, no server, in chunks; a bad row refused by name."""

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from test_tables import table, write

from training.cli import main
from training.data.tables import TableError
from training.nn import NadarayaWatson, NWConfig, SequenceConfig, SequenceModel
from training.search.options import TuneOptions
from training.search.study import tune
from training.serving.score import PartialFileError, check_kind, feature_columns, score_file
from training.tracking.registry import ChecksumMismatchError

FEATURES = ("age", "bmi")


@pytest.fixture(scope="module")
def people(stores):
    """A regression (nw-cost) and a classifier (nw-smoker) tuned briefly on one file in real stores."""
    data = write(table(120), stores["root"] / "people.csv")
    brief = {"model": "nw", "data": data, "features": FEATURES, "trials": 1, "epochs": 2, "progress": False}
    brief |= {"tracking_uri": stores["tracking_uri"], "storage": stores["storage"]}
    tune(TuneOptions(target="cost", study_name="nw-cost", **brief))
    tune(TuneOptions(target="smoker", study_name="nw-smoker", **brief))
    return stores | {"data": data}


def champion_predictions(people, name: str, frame: pd.DataFrame) -> np.ndarray:
    mlflow.set_tracking_uri(people["tracking_uri"])
    return mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(frame[list(FEATURES)])


def test_predictions_equal_the_champions_and_chunks_do_not_matter(people, tmp_path):
    frame = table(120)  # with columns the model does not take (city, cost, smoker): ignored
    whole = score_file("nw-cost", people["data"], tmp_path / "whole.csv", people["tracking_uri"])
    chunked = score_file("nw-cost", people["data"], tmp_path / "chunked.csv", people["tracking_uri"], batch_rows=7)
    parquet = write(frame, tmp_path / "people.parquet")
    from_parquet = score_file("nw-cost", parquet, tmp_path / "parquet.csv", people["tracking_uri"], batch_rows=11)
    assert whole.rows == chunked.rows == from_parquet.rows == 120
    text = (tmp_path / "whole.csv").read_text()
    assert text == (tmp_path / "chunked.csv").read_text() == (tmp_path / "parquet.csv").read_text()
    out = pd.read_csv(tmp_path / "whole.csv")
    assert list(out.columns) == ["row", "prediction"] and out["row"].tolist() == list(range(120))
    expected = champion_predictions(people, "nw-cost", frame)
    assert np.array_equal(out["prediction"].to_numpy(dtype=np.float32), expected.astype(np.float32))


def test_classification_answers_the_label_and_a_probability_per_class(people, tmp_path):
    score_file("nw-smoker", people["data"], tmp_path / "out.csv", people["tracking_uri"], batch_rows=50)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["row", "label", "probability_no", "probability_yes"]
    probabilities = out[["probability_no", "probability_yes"]].to_numpy()
    assert np.allclose(probabilities.sum(1), 1, atol=1e-6)
    assert out["label"].tolist() == np.where(probabilities.argmax(1) == 1, "yes", "no").tolist()
    assert out["label"].tolist() == champion_predictions(people, "nw-smoker", table(120)).tolist()


def spoiled(kind: str) -> pd.DataFrame:
    frame = table(120)
    if kind == "text":
        frame["bmi"] = frame["bmi"].astype(object)
        frame.loc[5, "bmi"] = "high"
    elif kind == "missing":
        frame.loc[[9, 10], "bmi"] = np.nan
    elif kind == "infinite":
        frame.loc[6, "age"] = np.inf
    elif kind == "beyond":
        frame.loc[7, "age"] = 1e12
    else:
        frame = frame.drop(columns="bmi")
    return frame


@pytest.mark.parametrize(
    "kind, words",
    [
        ("text", ["'bmi' is not numeric", "row 5:", "'high'"]),
        ("missing", ["'bmi' has missing values in rows 9, 10"]),
        ("infinite", ["'age' has infinite values in row 6"]),
        ("beyond", ["'age' is beyond what the model accepts in row 7", "1e+12"]),
        ("column", ["lacks column 'bmi'", "nw-cost takes age, bmi"]),
    ],
)
def test_a_bad_row_is_refused_naming_it_and_out_is_left_as_it_was(people, tmp_path, kind, words):
    data, out = write(spoiled(kind), tmp_path / "bad.csv"), tmp_path / "out.csv"
    out.write_text("earlier predictions\n")
    with pytest.raises(TableError) as refused:
        score_file("nw-cost", data, out, people["tracking_uri"], batch_rows=4)  # the bad rows are past chunk 1
    assert all(w in str(refused.value) for w in words), refused.value
    assert out.read_text() == "earlier predictions\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.csv",
        "out.csv",
    ]


def test_the_command_exits_2_with_the_error_and_writes_nothing(people, tmp_path, capsys):
    data, out = write(spoiled("text"), tmp_path / "bad.csv"), tmp_path / "out.csv"
    code = main(["score", "--name", "nw-cost", "--data", data, "--out", str(out)] + tracking(people))
    assert code == 2 and "error: column 'bmi' is not numeric (row 5" in capsys.readouterr().err
    assert not out.exists()
    good = main(["score", "--name", "nw-cost", "--data", people["data"], "--out", str(out)] + tracking(people))
    assert good == 0 and "scored 120 rows with nw-cost version 1" in capsys.readouterr().out
    missing = main(["score", "--name", "nw-none", "--data", people["data"], "--out", str(out)] + tracking(people))
    assert missing == 2 and "'nw-none' has no @champion" in capsys.readouterr().err


def tracking(people) -> list[str]:
    return ["--tracking-uri", people["tracking_uri"]]


def test_models_of_built_in_data_take_x_columns_or_the_files_columns_in_order():
    model = NadarayaWatson(NWConfig(in_features=2))
    assert feature_columns(model, ["x1", "id", "x0"], None, "nw-sine") == ["x0", "x1"]
    assert feature_columns(model, ["a", "b"], None, "nw-sine") == ["a", "b"]


def test_other_model_kinds_are_refused_naming_the_kind_that_scores():
    config = SequenceConfig(in_features=2, out_features=1, d_model=8, n_heads=2, n_layers=1)
    with pytest.raises(TableError, match="'mha' model; score takes nw"):
        check_kind(SequenceModel(config), "mha-adding")


def test_a_checkpoint_unlike_its_registered_digest_is_refused(people, tmp_path):
    client = mlflow.MlflowClient(people["tracking_uri"])
    version = client.get_model_version_by_alias("nw-cost", "champion")
    client.set_model_version_tag("nw-cost", version.version, "checkpoint_sha256", "0" * 64)
    try:
        with pytest.raises(ChecksumMismatchError) as error:
            score_file("nw-cost", people["data"], tmp_path / "out.csv", people["tracking_uri"])
        assert "0" * 64 in str(error.value)
    finally:
        client.set_model_version_tag("nw-cost", version.version, "checkpoint_sha256", version.tags["checkpoint_sha256"])
    assert not (tmp_path / "out.csv").exists()


def test_a_link_planted_where_the_partial_output_goes_is_refused_not_followed(people, tmp_path):
    victim, out = tmp_path / "victim.txt", tmp_path / "out.csv"
    victim.write_text("not to be overwritten\n")
    planted = tmp_path / f".{out.name}.{os.getpid()}.partial"
    planted.symlink_to(victim)  # another user guessed the name in a shared folder
    with pytest.raises(PartialFileError, match="planted"):
        score_file("nw-cost", people["data"], out, people["tracking_uri"])
    assert victim.read_text() == "not to be overwritten\n" and planted.is_symlink() and not out.exists()


def test_the_predictions_are_their_owners_alone_whatever_the_umask(people, tmp_path):
    before = os.umask(0o022)
    try:
        score_file("nw-cost", people["data"], tmp_path / "out.csv", people["tracking_uri"])
    finally:
        os.umask(before)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o600
