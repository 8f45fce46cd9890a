import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config):
    """Archives built by the tests are signed with a key of their own, never the user's (~/.config), one key for
    every worker of the run; the suite's processes keep the memory they reuse, as every entry point does."""
    os.environ.setdefault("ATTENTION_SERVE_KEYS", tempfile.mkdtemp(prefix="test-signing-keys-"))
    if getattr(config.option, "numprocesses", None):  # pytest-xdist's workers, started after this, inherit it:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # one torch thread each (a thread per core in every worker
        # oversubscribes the cores, and OpenMP's spinning threads made small trainings up to 6x slower)
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # made before the workers start: they inherit the folder
        from training.serving.signing import signing_key

        signing_key()
    from training.infra.memory import keep_freed_memory

    keep_freed_memory()


# The longest modules first, one to each of `make test`'s two workers (pytest-xdist gives modules out in the
# order collected, whole): the champions are built by the first while the second runs the scale-out module, and
# the short modules fill in after them instead of a long one ending the run alone.
LONGEST_FIRST = ("test_benchmarks.py", "test_scale_out.py")


@pytest.fixture(autouse=True)
def worker_reads_left_as_found():
    """A handler initialized in a test installs its buffered reads in this process (`handlers/worker_io.py`):
    undone after each test, so that every test starts with TorchServe's own."""
    from ts.protocol import otf_message_handler

    found = otf_message_handler._retrieve_buffer
    yield
    otf_message_handler._retrieve_buffer = found


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real MLflow store (SQLite + artifacts) and a real Optuna storage, private to a test module."""
    root = tmp_path_factory.mktemp("stores")
    return {
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "storage": f"sqlite:///{root / 'optuna.db'}",
        "root": root,
    }


@pytest.fixture(scope="module")
def serve_champion(stores):
    """`serve_champion(name)`: the study's @champion in `stores` archived (exactly one archive) and served by a
    real TorchServe on free loopback ports; stopped when the module is done."""
    from training.serving import serve
    from training.serving.archive import archive_champions
    from training.serving.serve import free_ports

    servers = []

    def start(name: str):
        (_archive,) = archive_champions(name, out_dir=stores["root"] / "archives", tracking_uri=stores["tracking_uri"])
        run_dir, store = stores["root"] / "run", stores["root"] / "archives"
        uri = stores["tracking_uri"]
        servers.append(
            serve.start(
                models=[name], run_dir=run_dir, model_store=store, ports=free_ports(), quiet=True, tracking_uri=uri
            )
        )
        return servers[-1]

    yield start
    for server in servers:
        serve.stop(server.run_dir, quiet=True)


def run_folder(tmp_path_factory) -> Path:
    """The folder every process of this test run shares: the run's own temp folder, or with pytest-xdist (make
    test runs two workers) the folder above the workers' own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def champions(tmp_path_factory):
    """nw-sine and mha-adding tuned briefly in real stores and archived from the registry's @champion,
    shared by the serving tests (each starts its own TorchServe over a copy of the model store). Built once per
    test run: the first worker to ask builds them under a lock, the others wait for it and read them."""
    from filelock import FileLock

    root = run_folder(tmp_path_factory) / "champions"
    stores = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "storage": f"sqlite:///{root / 'optuna.db'}"}
    built = root / "archives.json"  # written last: the champions are whole
    with FileLock(f"{root}.lock"):
        if not built.exists():
            root.mkdir()
            archives = build_champions(stores, root / "archives")
            built.write_text(json.dumps([str(archive) for archive in archives]))
    return {**stores, "root": root, "archives": [Path(archive) for archive in json.loads(built.read_text())]}


def build_champions(stores: dict, out_dir: Path) -> list[Path]:
    from training.data.datasets import LOADERS, load_adding
    from training.search.options import TuneOptions
    from training.search.study import tune
    from training.serving.archive import archive_champions

    tune(TuneOptions(model="nw", dataset="sine", trials=6, progress=False, **stores))
    with pytest.MonkeyPatch.context() as patch:  # a smaller `adding` (same generator, lengths up to 200): seconds
        patch.setitem(LOADERS, "adding", functools.partial(load_adding, n_train=300, n_val=100, n_test=100))
        tune(TuneOptions(model="mha", dataset="adding", trials=1, epochs=1, progress=False, **stores))
        return archive_champions(out_dir=out_dir, tracking_uri=stores["tracking_uri"])  # tested again


@pytest.fixture(scope="session")
def served_champions(champions, tmp_path_factory):
    """The champions served by one real TorchServe behind its front door, as `make serve` runs them, for the modules
    that only ask it (test_serving_e2e, test_oip_e2e): (server, archives). Started from a shell holding a worker's
    credentials, which it must not pass on."""
    from served_champions import CREDENTIALS

    from training.serving import serve

    run_dir = tmp_path_factory.mktemp("e2e-run")
    store, uri = champions["root"] / "archives", champions["tracking_uri"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        server = serve.start(run_dir=run_dir, model_store=store, ports=serve.free_ports(), quiet=True, tracking_uri=uri,
                             front_door=True)  # as `make serve` runs it  # fmt: skip
    yield server, champions["archives"]
    serve.stop(server.run_dir, quiet=True)


@pytest.fixture(scope="session")
def model_store_copy(champions):
    """Makes a private model store holding the champions' archives (for tests that add or alter archives)."""

    def copy(target):
        target.mkdir(parents=True)
        for archive in champions["archives"]:
            shutil.copy(archive, target / archive.name)
        return target

    return copy
