"""s2s-dates end to end: a real (small) tune into real stores, the archive from the registry, a real TorchServe."""

import functools

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import tritonclient.utils
from documented import check_documented_curls
from mlflow import MlflowClient
from triton_clients import triton_http, triton_input, triton_outputs

from training.data import datasets as data
from training.demo import DEMO_START
from training.search.options import TuneOptions
from training.search.study import enqueue_trial, tune

pytestmark = pytest.mark.e2e
TEXTS = ["23 Nov 2026", "11/23/26", "Monday, November 23, 2026", "23.11.2026", "nov 23rd, 2026"]


@pytest.fixture(scope="module")
def served(stores, serve_champion):
    # A smaller `dates` (same generator and conventions) keeps the tune to seconds.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(data.LOADERS, "dates", functools.partial(data.load_dates, n_train=1500, n_val=200, n_test=200))
        options = TuneOptions(
            model="s2s",
            dataset="dates",
            trials=1,
            epochs=2,
            storage=stores["storage"],
            tracking_uri=stores["tracking_uri"],
            progress=False,
        )
        enqueue_trial(options, "maximize", DEMO_START["s2s-dates"])
        result = tune(options)
        server = serve_champion("s2s-dates")  # archived on the same data: the archive tests the champion again
    yield server, result


def test_the_archive_serves_the_same_strings_as_the_registered_model(stores, served):
    server, result = served
    status, body, _ = server.predict("s2s-dates", TEXTS)
    mlflow.set_tracking_uri(stores["tracking_uri"])
    expected = mlflow.pyfunc.load_model("models:/s2s-dates@champion").predict(pd.DataFrame({"text": TEXTS}))
    assert status == 200 and body["predictions"] == list(expected)
    assert all(isinstance(p, str) for p in body["predictions"])
    assert body["model"]["name"] == "s2s-dates" and body["model"]["run_id"] == result.parent_run_id


def test_explanations_are_alignments_consistent_with_the_predictions(served):
    server, _ = served
    _, predicted, _ = server.predict("s2s-dates", TEXTS)
    status, body, _ = server.predict("s2s-dates", TEXTS, explain=True)
    assert status == 200
    for text, prediction, item in zip(TEXTS, predicted["predictions"], body["explanations"]):
        assert item["prediction"] == prediction == "".join(item["output_tokens"])
        assert item["input_tokens"] == list(text)
        weights = torch.tensor(item["weights"], dtype=torch.float64)
        assert weights.shape == (len(prediction), len(text))
        assert torch.allclose(weights.sum(-1), torch.ones(len(prediction), dtype=torch.float64), atol=1e-5)


def test_bad_texts_get_named_4xx_errors_and_the_server_stays_healthy(served):
    server, _ = served
    bad = [
        ([42], 400, "invalid instance"),
        ([""], 400, "empty text"),
        (["23 Nov 2026 ☺"], 400, "unknown character"),
        (["1" * 100], 413, "text too long"),
    ]
    for instances, status, error in bad:
        got, answer, _ = server.predict("s2s-dates", instances)
        assert (got, answer["error"]) == (status, error), answer
    _, answer, _ = server.predict("s2s-dates", ["23 Nov 2026 ☺"])
    assert "'☺' at position 12" in answer["detail"]
    assert server.health() == "Healthy" and server.predict("s2s-dates", ["1.2.26"])[0] == 200


def test_the_tune_logged_curves_and_alignment_heatmaps(stores, served):
    _, result = served
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/s2s_alignments.png", "plots/learning_curve.png"} <= plots
    parent = client.get_run(result.parent_run_id)
    assert {"test_exact_match", "test_token_accuracy", "best_val_exact_match"} <= set(parent.data.metrics)
    (child,) = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    for metric in ("val_exact_match", "val_loss", "train_loss"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == [1, 2]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sends_strings_and_gets_the_same_strings_and_their_alignments(served, binary):
    """The Open Inference Protocol for text: `texts` BYTES [-1] in, `prediction` BYTES out (UTF-8), and the
    alignment only when asked for, as /explanations gives it (zero-padded to the batch's longest)."""
    server, _ = served
    client, headers = triton_http(server)
    _, predicted, _ = server.predict("s2s-dates", TEXTS)
    _, explained, _ = server.predict("s2s-dates", TEXTS, explain=True)
    texts = triton_input("texts", "BYTES", np.array([t.encode() for t in TEXTS], dtype=object), binary)
    result = client.infer("s2s-dates", [texts], outputs=triton_outputs(["prediction"], binary), headers=headers)
    strings = [p.decode() if isinstance(p, bytes) else p for p in result.as_numpy("prediction")]  # JSON: str
    assert strings == predicted["predictions"]
    assert [o["name"] for o in result.get_response()["outputs"]] == ["prediction"]
    both = triton_outputs(["prediction", "alignment"], binary)
    alignment = client.infer("s2s-dates", [texts], outputs=both, headers=headers).as_numpy("alignment")
    assert alignment.shape == (len(TEXTS), max(map(len, predicted["predictions"])), max(map(len, TEXTS)))
    for i, item in enumerate(explained["explanations"]):
        rows, columns = len(item["output_tokens"]), len(item["input_tokens"])
        assert np.allclose(alignment[i, :rows, :columns], item["weights"], atol=1e-6)
        assert not alignment[i, rows:].any() and not alignment[i, :, columns:].any()
    with pytest.raises(tritonclient.utils.InferenceServerException) as error:  # a character the model never saw
        bad = triton_input("texts", "BYTES", np.array(["23 Nov 2026 ☺".encode()], dtype=object), binary)
        client.infer("s2s-dates", [bad], headers=headers)
    assert error.value.status() == "400" and "unknown character" in error.value.message()
    assert server.health() == "Healthy"


def test_the_documented_curl_call_answers_as_documented(served):
    server, _ = served
    ((request, answer),) = check_documented_curls(server, "s2s-dates")
    _, predicted, _ = server.predict("s2s-dates", request["inputs"][0]["data"])
    assert answer["outputs"][0]["data"] == predicted["predictions"]
