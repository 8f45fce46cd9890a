import functools
import os
import shutil
import tempfile

import pytest


def pytest_configure(config):
    """Archives built by the tests are signed with a key of their own, never the user's (~/.config); the suite's
    process keeps the memory it reuses, as every entry point does."""
    os.environ.setdefault("ATTENTION_SERVE_KEYS", tempfile.mkdtemp(prefix="test-signing-keys-"))
    from training.infra.memory import keep_freed_memory

    keep_freed_memory()


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


@pytest.fixture(scope="session")
def champions(tmp_path_factory):
    """nw-sine and mha-adding tuned briefly in real stores and archived from the registry's @champion,
    shared by the serving tests (each starts its own TorchServe over a copy of the model store)."""
    from training.data.datasets import LOADERS, load_adding
    from training.search.options import TuneOptions
    from training.search.study import tune
    from training.serving.archive import archive_champions

    root = tmp_path_factory.mktemp("champions")
    stores = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "storage": f"sqlite:///{root / 'optuna.db'}"}
    tune(TuneOptions(model="nw", dataset="sine", trials=6, progress=False, **stores))
    with pytest.MonkeyPatch.context() as patch:  # a smaller `adding` (same generator, lengths up to 200): seconds
        patch.setitem(LOADERS, "adding", functools.partial(load_adding, n_train=300, n_val=100, n_test=100))
        tune(TuneOptions(model="mha", dataset="adding", trials=1, epochs=1, progress=False, **stores))
        archives = archive_champions(out_dir=root / "archives", tracking_uri=stores["tracking_uri"])  # tested again
    return {**stores, "root": root, "archives": archives}


@pytest.fixture(scope="session")
def served_champions(champions, tmp_path_factory):
    """The champions served by one real TorchServe for the modules that only ask it (test_serving_e2e, test_oip_e2e):
    (server, archives). Started from a shell holding a worker's credentials, which it must not pass on."""
    from served_champions import CREDENTIALS

    from training.serving import serve

    run_dir = tmp_path_factory.mktemp("e2e-run")
    store, uri = champions["root"] / "archives", champions["tracking_uri"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        server = serve.start(run_dir=run_dir, model_store=store, ports=serve.free_ports(), quiet=True, tracking_uri=uri)
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
