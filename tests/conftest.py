import pytest


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real MLflow store (SQLite + artifacts) and a real Optuna storage, private to a test module."""
    root = tmp_path_factory.mktemp("stores")
    return {
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "storage": f"sqlite:///{root / 'optuna.db'}",
        "root": root,
    }
