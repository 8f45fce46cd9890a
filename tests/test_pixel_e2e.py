"""pixel-digits end to end: a real (tiny) tune into real stores, the archive from the registry, a real TorchServe."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import tritonclient.utils
from documented import check_documented_curls
from mlflow import MlflowClient
from triton_clients import triton_http, triton_input, triton_outputs

from handlers.contract import agrees
from training.data.datasets import load_dataset
from training.nn import load_checkpoint
from training.search.options import TuneOptions
from training.search.study import tune
from training.tracking.model_files import checkpoint_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(stores, serve_champion):
    options = TuneOptions(
        model="pixel",
        dataset="digits",
        trials=2,
        epochs=2,
        storage=stores["storage"],
        tracking_uri=stores["tracking_uri"],
        progress=False,
    )
    result = tune(options)
    yield serve_champion("pixel-digits"), result


@pytest.fixture(scope="module")
def champion(stores, served):
    """The registered champion's checkpoint, rebuilt in this process, and the first test digits."""
    mlflow.set_tracking_uri(stores["tracking_uri"])
    local = mlflow.artifacts.download_artifacts("models:/pixel-digits@champion", dst_path=str(stores["root"] / "dl"))
    model, _ = load_checkpoint(checkpoint_in(local))
    return model, load_dataset("digits").test.x[:6]


def test_a_tiny_tune_registers_a_champion_with_its_review_artifacts(stores, served):
    _, result = served
    assert result.conclusion is not None and result.conclusion.registered
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    version = client.get_model_version_by_alias("pixel-digits", "champion")
    assert str(version.version) == result.conclusion.model_version
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/pixel_attention.png", "plots/learning_curve.png"} <= plots
    metrics = client.get_run(result.parent_run_id).data.metrics
    assert {"test_accuracy", "best_val_accuracy", "gamma"} <= set(metrics)


def test_served_answers_equal_the_in_process_model(stores, served, champion):
    server, result = served
    model, images = champion
    status, body, _ = server.predict("pixel-digits", images.tolist())
    logits = model(images[:, None])[0]
    assert status == 200 and body["model"]["name"] == "pixel-digits"
    assert body["model"]["run_id"] == result.parent_run_id
    for prediction, row in zip(body["predictions"], logits):
        assert prediction["label"] == int(row.argmax())
        assert prediction["probabilities"] == pytest.approx(torch.softmax(row.double(), -1).tolist(), abs=1e-5)
    frame = pd.DataFrame({"image": images.tolist()})
    assert [p["label"] for p in body["predictions"]] == list(
        mlflow.pyfunc.load_model("models:/pixel-digits@champion").predict(frame)
    )
    _, flat, _ = server.predict("pixel-digits", images.flatten(1).tolist())
    assert flat["predictions"] == body["predictions"]


def test_explanations_are_consistent_with_predictions_and_the_checkpoint(served, champion):
    server, _ = served
    model, images = champion
    _, predicted, _ = server.predict("pixel-digits", images.tolist())
    status, body, _ = server.predict("pixel-digits", images.tolist(), explain=True, queries=[[3, 4], [6, 2]])
    assert status == 200
    attention = model(images[:, None], need_weights=True)[1]["attention"]  # (B, 64, 64)
    for i, item in enumerate(body["explanations"]):
        assert agrees(item["prediction"], predicted["predictions"][i])  # the contract's tolerance
        assert item["gamma"] == float(model.attention.gamma.detach())
        maps = torch.tensor(item["attention"], dtype=torch.float64)  # (Q, H, W)
        assert maps.shape == (2, 8, 8)
        assert torch.allclose(maps.sum((1, 2)), torch.ones(2, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(maps[1].flatten(), attention[i, 6 * 8 + 2].double(), atol=1e-5)
    status, body, _ = server.predict("pixel-digits", images[:1].tolist(), explain=True)
    (row, col), image = body["explanations"][0]["queries"][0], images[0]
    assert status == 200 and image[row, col] == image.max()  # the default query: the brightest pixel


def test_bad_images_get_named_4xx_errors_and_the_server_stays_healthy(served, champion):
    server, _ = served
    _, images = champion
    good = images[0].tolist()
    bad = [
        (["7"], 400, "invalid instance"),
        ([good[:7]], 400, "wrong image size"),
        ([good[:7] + [good[7] + [0]]], 400, "wrong image size"),
        ([good[:7] + [good[7][:7] + [None]]], 400, "invalid instance"),
        ([[1e300] * 64], 400, "number out of range"),
        ([[16.5] + [0] * 63], 400, "number out of range"),
    ]
    for instances, status, error in bad:
        got, answer, _ = server.predict("pixel-digits", instances)
        assert (got, answer["error"]) == (status, error), answer
    raw = b'{"instances": [[' + b",".join([b"0"] * 63 + [b"NaN"]) + b"]]}"
    got, answer, _ = server.request(
        "POST", f"{server.inference_url}/predictions/pixel-digits", raw, token=server.token()
    )
    assert (got, answer["error"]) == (400, "non-finite number")
    got, answer, _ = server.predict("pixel-digits", [good], explain=True, queries=[[0, 8]])
    assert (got, answer["error"]) == (400, "invalid queries") and "columns 0..7" in answer["detail"]
    assert server.health() == "Healthy" and server.predict("pixel-digits", [good])[0] == 200


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sends_images_and_gets_labels_probabilities_and_the_pixel_attention(served, champion, binary):
    """The Open Inference Protocol for images: `images` FP32 [-1, 8, 8] in, `label` and `probabilities` out, and
    `pixel_attention` (the attention each pixel receives) only when asked for, as /explanations' `attended`."""
    server, _ = served
    _, images = champion
    client, headers = triton_http(server)
    _, predicted, _ = server.predict("pixel-digits", images.tolist())
    _, explained, _ = server.predict("pixel-digits", images.tolist(), explain=True)
    inputs = [triton_input("images", "FP32", images.numpy().astype(np.float32), binary)]
    result = client.infer(
        "pixel-digits", inputs, outputs=triton_outputs(["label", "probabilities"], binary), headers=headers
    )
    assert result.as_numpy("label").tolist() == [p["label"] for p in predicted["predictions"]]
    assert agrees(result.as_numpy("probabilities").tolist(), [p["probabilities"] for p in predicted["predictions"]])
    attended = client.infer(
        "pixel-digits", inputs, outputs=triton_outputs(["pixel_attention"], binary), headers=headers
    ).as_numpy("pixel_attention")
    assert attended.shape == (len(images), 8, 8)
    assert np.allclose(attended, [item["attended"] for item in explained["explanations"]], atol=1e-6)
    plain = client.infer("pixel-digits", inputs, headers=headers).get_response()["outputs"]
    assert [o["name"] for o in plain] == ["label", "probabilities"]  # unasked, no attention is computed or sent
    wrong = [triton_input("images", "FP32", images.numpy().astype(np.float32)[:, :7], binary)]
    with pytest.raises(tritonclient.utils.InferenceServerException) as error:
        client.infer("pixel-digits", wrong, headers=headers)
    assert error.value.status() == "400" and "input 'images' has shape" in error.value.message()
    assert server.health() == "Healthy"


def test_the_documented_curl_call_answers_as_documented(served):
    server, _ = served
    ((request, answer),) = check_documented_curls(server, "pixel-digits")
    image = np.array(request["inputs"][0]["data"]).reshape(1, 8, 8).tolist()
    _, predicted, _ = server.predict("pixel-digits", image)
    assert answer["outputs"][0]["data"] == [predicted["predictions"][0]["label"]]
