"""The registry carries data, not code: a registered version holds its checkpoint, MLflow's metadata, an input
example and a signature, and loads through `training.serving.pyfunc`, installed with the project. Nothing stored
with a version is executed when it loads; older versions (a model from code with its own copy of the package)
keep their checkpoint where they always had it."""

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from small_models import small_nw

from training.data.frames import example_frame, predict_frame
from training.nn.checkpoint import file_sha256
from training.tracking import mlflow_store, model_files, model_log, registry

NAME = "nw-form"
FIXTURE = Path(__file__).parent / "fixtures" / "pre_move" / "nw-sine-mlflow-model"
# Run by Python if anything stored with the version were imported or executed: it leaves a marker behind.
PLANTED = "from pathlib import Path\nPath({marker!r}).write_text('executed')\n"


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A small NW model logged and registered by `model_log.log_and_register`, as a conclusion does."""
    root = tmp_path_factory.mktemp("model-form")
    uri, client, data, model = small_nw(root)
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id(client, NAME)) as run:
        number, sha = model_log.log_and_register(
            model, data, NAME, run.info.run_id, {"mse": 0.5}, "mse", {"val_mse": "0.25", "candidate": "probe"}
        )
    uri_of_files = client.get_model_version_download_uri(NAME, number)
    stored = Path(urllib.parse.unquote(urllib.parse.urlparse(uri_of_files).path))
    example = example_frame(data, model)
    expected = predict_frame(model, example)
    return {"uri": uri, "client": client, "number": number, "sha": sha, "stored": stored, "model": model} | {
        "example": example,
        "expected": expected,
    }


def test_a_version_holds_its_checkpoint_and_metadata_and_no_code(version):
    stored = version["stored"]
    files = sorted(str(p.relative_to(stored)) for p in stored.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith(".py")], files
    assert not (stored / "code").exists()
    assert "data/checkpoint.pt" in files and "input_example.json" in files and "MLmodel" in files
    flavor = yaml.safe_load((stored / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == model_files.LOADER_MODULE == "training.serving.pyfunc"
    assert flavor["data"] == "data/checkpoint.pt" and not flavor.get("code") and "artifacts" not in flavor
    assert file_sha256(stored / "data" / "checkpoint.pt") == version["sha"]


def test_the_version_keeps_its_tags_signature_and_input_example(version):
    tags = version["client"].get_model_version(NAME, version["number"]).tags
    assert tags["checkpoint_sha256"] == version["sha"] and tags["val_mse"] == "0.25" and tags["test_mse"] == "0.5"
    assert tags["candidate"] == "probe" and tags["run_id"]
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version['number']}")
    assert info.signature.inputs.input_names() == ["x0"] and info.saved_input_example_info["type"] == "dataframe"


def test_loading_a_version_executes_nothing_stored_with_it(version, tmp_path):
    """Files planted where a model from code, a code path or a shadowing package would be are never run."""
    stored, marker = version["stored"], tmp_path / "marker"
    planted = [
        stored / "loader.py",
        stored / "mlflow_model.py",
        stored / "data" / "checkpoint.py",
        stored / "code" / "training" / "__init__.py",
        stored / "code" / "training" / "serving" / "pyfunc.py",
        stored / "training" / "serving" / "pyfunc.py",
    ]
    try:
        for path in planted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PLANTED.format(marker=str(marker)))
        # A fresh process: nothing of the project imported before MLflow loads the version.
        script = (
            "import json, sys, mlflow, pandas as pd\n"
            "mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])\n"
            "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
            "print(json.dumps(model.predict(pd.DataFrame(json.loads(sys.argv[3]))).tolist()))\n"
        )
        frame = json.dumps(version["example"].to_dict(orient="list"))
        uri = f"models:/{NAME}/{version['number']}"
        done = subprocess.run(
            [sys.executable, "-c", script, version["uri"], uri, frame],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).parents[1],  # the project, as installed for `make tune`: the loader comes from it
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.splitlines()[-1]) == pytest.approx(version["expected"].tolist(), abs=1e-6)
        here = mlflow.pyfunc.load_model(uri).predict(version["example"])  # and in this process
        assert here.tolist() == pytest.approx(version["expected"].tolist(), abs=1e-6)
        assert not marker.exists()
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


def test_the_champions_checkpoint_is_found_in_either_layout(version, tmp_path):
    client = version["client"]
    client.set_registered_model_alias(NAME, registry.CHAMPION, version["number"])
    found, checkpoint = registry.download_champion(client, NAME, tmp_path / "new")
    assert str(found.version) == version["number"] and checkpoint == tmp_path / "new" / "data" / "checkpoint.pt"
    assert model_files.checkpoint_in(FIXTURE) == FIXTURE / "artifacts" / "checkpoint.pt"  # a version from before


def test_a_version_without_its_checksum_is_refused_not_waved_through(version, tmp_path):
    client = version["client"]
    bare = client.create_model_version(NAME, source=client.get_model_version(NAME, version["number"]).source)
    client.set_registered_model_alias(NAME, registry.CHAMPION, bare.version)
    try:
        with pytest.raises(registry.MissingChecksumError, match=f"version {bare.version} records no checkpoint_sha256"):
            registry.download_champion(client, NAME, tmp_path)
    finally:
        client.set_registered_model_alias(NAME, registry.CHAMPION, version["number"])
        client.delete_model_version(NAME, bare.version)


def test_the_loader_answers_a_frame_as_the_model_does(version):
    from training.serving.pyfunc import _load_pyfunc

    loaded = _load_pyfunc(str(version["stored"] / "data" / "checkpoint.pt"))
    frame = pd.DataFrame({"x0": [0.5, 2.5]})
    assert loaded.predict(frame).tolist() == pytest.approx(predict_frame(version["model"], frame).tolist())
