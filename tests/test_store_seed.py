"""A new local MLflow store is a copy of the cached empty one: the same schema MLflow's migrations build, its
Default experiment made for the new store, an existing store never touched."""

import sqlite3

from mlflow import MlflowClient

from training.tracking import mlflow_store, store_seed


def schema(path) -> set[tuple[str, tuple[str, ...]]]:
    """Every table's and index's definition, its lines in any order (MLflow's migrations order the columns they
    rebuild differently from one build to the next), and the schema's revision."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    lines = {(name, tuple(sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))) for name, sql in rows}
    return lines | {("alembic", (version,))}


def test_a_seeded_store_has_the_schema_mlflow_builds_and_its_own_default_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTENTION_SERVE_CACHE", str(tmp_path / "cache"))
    built = tmp_path / "built.db"
    MlflowClient(f"sqlite:///{built}").search_experiments()  # MLflow's own migrations
    seeded = tmp_path / "seeded" / "mlflow.db"
    client = mlflow_store.configure(f"sqlite:///{seeded}")
    assert schema(seeded) == schema(built)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert seeded.stat().st_mode & 0o777 == 0o600 and seeded.parent.stat().st_mode & 0o777 == 0o700
    (default,) = client.search_experiments()
    assert default.name == "Default" and default.experiment_id == "0"
    client.create_experiment("mine")
    assert {e.name for e in MlflowClient(f"sqlite:///{seeded}").search_experiments()} == {"Default", "mine"}


def test_an_existing_store_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTENTION_SERVE_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "mlflow.db"
    mlflow_store.configure(f"sqlite:///{store}").create_experiment("kept")
    assert not store_seed.seed_sqlite_store(store)
    assert "kept" in {e.name for e in MlflowClient(f"sqlite:///{store}").search_experiments()}


def test_without_a_usable_cache_mlflow_builds_the_store_itself(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ATTENTION_SERVE_CACHE", str(tmp_path / "file" / "cache"))  # under a file: no folder
    store = tmp_path / "mlflow.db"
    assert not store_seed.seed_sqlite_store(store) and not store.exists()
    assert mlflow_store.configure(f"sqlite:///{store}").search_experiments()[0].name == "Default"
