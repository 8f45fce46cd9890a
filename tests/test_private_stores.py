"""The local stores (mlruns/, archives/, .serve/) are their owner's alone whatever the umask: tried as `nobody`."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from training.infra import private
from training.search.storage import open_storage
from training.tracking import mlflow_store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trying as another user needs root (setpriv)")
# Run as `nobody`: prints each path it could open (a folder listed, a file's first byte read).
PROBE = """
import os, sys
for path in sys.argv[1:]:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(1)
    except OSError:
        continue
    print(path)
"""


def opened_by_nobody(root: Path) -> list[str]:
    paths = [str(root)] + [str(p) for p in root.rglob("*")]
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", PROBE]
    done = subprocess.run(command + paths, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.fixture
def shared():
    """A folder every local user may pass through (as a home or a checkout often is), under the usual umask."""
    folder, umask = Path(tempfile.mkdtemp()), os.umask(0o022)
    folder.chmod(0o755)
    yield folder
    os.umask(umask)
    shutil.rmtree(folder)


def test_a_new_local_store_opens_to_no_other_user(shared):
    store = shared / "mlruns"
    client = mlflow_store.configure(f"sqlite:///{store / 'mlflow.db'}")
    run = client.create_run(mlflow_store.experiment_id(client, "nw-file"))
    client.log_text(run.info.run_id, "training rows", "checkpoint.txt")
    storage = open_storage(f"sqlite:///{store / 'optuna.db'}", heartbeat=60, grace=120)
    optuna.create_study(storage=storage, study_name="nw-file")
    assert (store / "artifacts").is_dir() and (store / "optuna.db").is_file()
    assert store.stat().st_mode & 0o777 == 0o700
    assert opened_by_nobody(shared) == [str(shared)]  # the folder around it, nothing of the store


def test_an_open_store_is_tightened_on_first_use_with_one_line(shared, capsys, monkeypatch):
    store = shared / "mlruns"
    (store / "artifacts" / "1").mkdir(parents=True)
    (store / "artifacts" / "1" / "checkpoint.pt").write_text("training rows")
    (store / "optuna.db").write_text("")
    assert len(opened_by_nobody(store)) == 5  # as made under umask 022 by an earlier version
    monkeypatch.setattr(private, "MLRUNS", store)
    mlflow_store.configure(f"sqlite:///{store / 'mlflow.db'}")
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "tightened" in line] == [
        f"{store} was open to other users (0755): tightened, with everything in it, to its owner alone"
    ]
    assert (store / "artifacts" / "1" / "checkpoint.pt").stat().st_mode & 0o777 == 0o600
    assert opened_by_nobody(store) == []
    mlflow_store.configure(f"sqlite:///{store / 'mlflow.db'}")  # once: a private store is left as it is
    assert "tightened" not in capsys.readouterr().err


def test_a_database_in_a_folder_of_the_users_own_is_private_and_the_folder_kept(shared):
    database = shared / "studies" / "optuna.db"
    database.parent.mkdir()
    open_storage(f"sqlite:///{database}", heartbeat=60, grace=120)
    assert database.parent.stat().st_mode & 0o777 == 0o755 and database.stat().st_mode & 0o777 == 0o600
    assert opened_by_nobody(database.parent) == [str(database.parent)]


def test_the_command_line_creates_what_it_makes_for_its_owner_alone():
    """`python -m training` sets umask 077 before any command: what MLflow and TorchServe write is private too."""
    code = "import os, runpy, sys\nsys.argv = ['training', '--help']\ntry:\n    runpy.run_module('training', "
    code += "run_name='__main__')\nexcept SystemExit:\n    pass\nprint(oct(os.umask(0)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "0o77"
