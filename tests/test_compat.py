"""What was built before the layout moved (issue 19) still loads: an `nw-sine` archive and a registered MLflow
model, both made with the code at git 60ff4dd and kept in tests/fixtures/pre_move with their answers."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_handler import MockContext

from handlers.attention_handler import AttentionHandler

FIXTURE = Path(__file__).parent / "fixtures" / "pre_move"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def test_a_registered_model_from_before_the_move_loads_and_answers_as_it_did():
    # In a process of its own: MLflow puts the model's own copy of `training` first on sys.path.
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "print(json.dumps(model.predict(pd.DataFrame({'x0': json.loads(sys.argv[2])})).tolist()))\n"
    )
    xs = json.dumps([x[0] for x in EXPECTED["instances"]])
    done = subprocess.run(
        [sys.executable, "-c", script, str(FIXTURE / "nw-sine-mlflow-model"), xs],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == pytest.approx(EXPECTED["predictions"], abs=1e-6)


def test_an_archive_from_before_the_move_answers_as_it_did_with_todays_handler(tmp_path):
    with zipfile.ZipFile(FIXTURE / "nw-sine.mar") as archive:
        for member in ("checkpoint.pt", "model_info.json"):
            archive.extract(member, tmp_path)
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    (raw,) = handler.handle([{"body": {"instances": EXPECTED["instances"]}}], MockContext(tmp_path))
    answer = json.loads(raw)
    assert answer["model"]["name"] == "nw-sine"
    assert answer["predictions"] == pytest.approx(EXPECTED["predictions"], abs=1e-5)


@pytest.mark.e2e
def test_an_archive_from_before_the_move_is_served_by_todays_server(tmp_path):
    from training.serving import serve
    from training.serving.serve import free_ports
    from training.serving.signing import UnsignedArchiveError

    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(FIXTURE / "nw-sine.mar", store / "nw-sine.mar")
    with pytest.raises(UnsignedArchiveError, match="make archive"):  # built before archives were signed
        serve.start(models=["nw-sine"], run_dir=tmp_path / "run", model_store=store, ports=free_ports(), quiet=True)
    server = serve.start(
        models=["nw-sine"],
        run_dir=tmp_path / "run",
        model_store=store,
        ports=free_ports(),
        quiet=True,
        trust_unsigned=True,  # the user opts in to serve it as it is
    )
    try:
        status, body, _ = server.predict("nw-sine", EXPECTED["instances"])
        assert status == 200, body
        assert body["predictions"] == pytest.approx(EXPECTED["predictions"], abs=1e-5)
    finally:
        serve.stop(server.run_dir, quiet=True)
