"""Storage URLs, journal storage, per-worker sampler seeds and the serialized champion decision."""

import random
import threading
import time

import optuna
import pytest

from training.cli import main
from training.infra.locks import storage_lock
from training.infra.processes import free_port
from training.infra.storage_urls import one_line, redact, redact_text
from training.search.options import TuneOptions
from training.search.storage import sampler_seed
from training.search.study import tune
from training.tracking import mlflow_store, registry


def test_each_invocation_samples_with_its_own_seed_and_the_first_with_the_seed_given():
    assert sampler_seed(7, 0) == 7 and sampler_seed(0, 0) == 0
    seeds = [sampler_seed(7, n) for n in range(200)]
    assert len(set(seeds)) == 200
    assert seeds == [sampler_seed(7, n) for n in range(200)]  # reproducible
    assert sampler_seed(8, 1) != sampler_seed(7, 1)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def tune_argv(tmp_path):
    return ["tune", "--model", "nw", "--dataset", "sine", "--trials", "1", "--no-progress"]


@pytest.mark.parametrize("form", ["tuner:s3cret@{host}/optuna", "tuner@{host}/optuna?password=s3cret"])
def test_an_unreachable_postgres_storage_is_one_line_naming_it_without_the_password(capsys, tmp_path, tune_argv, form):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    url = "postgresql://" + form.format(host=host)
    err = one_line_error(capsys, tune_argv + ["--storage", url, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert f"@{host}/optuna" in err and "s3cret" not in err


SECRET_FORMS = [  # (URL, what is left of it)
    ("postgresql://tuner:s3cret@db:5432/optuna", "postgresql://tuner:***@db:5432/optuna"),
    ("postgresql+psycopg://tuner:s3cret@db/optuna", "postgresql+psycopg://tuner:***@db/optuna"),
    ("postgresql://tuner:s3%40c%2Fret@db/optuna", "postgresql://tuner:***@db/optuna"),  # percent-encoded
    ("postgresql://tuner:s3@cret@db/optuna", "postgresql://tuner:***@db/optuna"),  # an @ left as it is
    ("postgresql://tuner@db/optuna?password=s3cret", "postgresql://tuner@db/optuna?password=***"),
    (
        "postgresql://db/optuna?sslmode=verify-full&sslpassword=s3cret",
        "postgresql://db/optuna?sslmode=verify-full&sslpassword=***",
    ),
    (
        "postgresql://db/optuna?user=tuner&password=s3cret&connect_timeout=5",
        "postgresql://db/optuna?user=tuner&password=***&connect_timeout=5",
    ),
    ("postgresql://db/optuna?PASSWORD=s3cret", "postgresql://db/optuna?PASSWORD=***"),
    ("postgresql://db/optuna?pass%77ord=s3cret", "postgresql://db/optuna?pass%77ord=***"),  # the key percent-encoded
    ("host=db dbname=optuna password=s3cret", "host=db dbname=optuna password=***"),  # libpq's key=value form
    ("host=db password='s3 cret' user=tuner", "host=db password=*** user=tuner"),
    ("http://admin:s3cret@mlflow:5000/", "http://admin:***@mlflow:5000/"),
    ("https://mlflow:5000/?token=s3cret", "https://mlflow:5000/?token=***"),
    ("sqlite:////tmp/a:b@c/mlflow.db", "sqlite:////tmp/a:b@c/mlflow.db"),  # a path, no password
    ("postgresql://tuner@db/optuna", "postgresql://tuner@db/optuna"),
]


@pytest.mark.parametrize("url, shown", SECRET_FORMS)
def test_redact_hides_the_password_in_every_form(url, shown):
    assert redact(url) == shown
    assert "s3" not in redact_text(f"cannot open '{url}': refused")


def test_review_links_and_error_lines_carry_no_password():
    from training.tracking.review_links import review_link

    for url, _ in SECRET_FORMS[:9]:
        assert "s3" not in review_link(url, "#/experiments/1")
    error = ValueError("Could not parse SQLAlchemy URL from string 'postgresql://u:s3cret@h/x?sslpassword=s3cret'")
    assert "s3cret" not in one_line(error)


@pytest.mark.parametrize("url", ["nosuchdb://host/x", "sqlite:///{tmp}/a-file/optuna.db"])
def test_a_bad_storage_url_is_one_line_naming_it(capsys, tmp_path, tune_argv, url):
    (tmp_path / "a-file").write_text("not a directory")
    url = url.format(tmp=tmp_path)
    err = one_line_error(capsys, tune_argv + ["--storage", url, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert url in err


def test_an_unreachable_tracking_server_is_one_line_naming_it(capsys, tmp_path, tune_argv):
    uri = f"http://127.0.0.1:{free_port()}"
    err = one_line_error(capsys, tune_argv + ["--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", uri])
    assert uri in err
    err = one_line_error(capsys, ["ui", "--tracking-uri", uri])  # `make ui` against a server: it is the UI
    assert uri in err


def test_the_ui_over_a_tracking_server_only_points_at_it(capsys, monkeypatch):
    monkeypatch.setattr(mlflow_store, "check_tracking_uri", lambda uri: None)
    assert main(["ui", "--tracking-uri", "http://mlflow.internal:5000"]) == 0
    assert "http://mlflow.internal:5000" in capsys.readouterr().out


def test_review_links_point_at_the_store_in_use():
    from training.tracking.review_links import review_link
    from training.tracking.run_notes import run_route

    route = run_route("3", "abc")
    assert review_link("http://u:pw@mlflow:5000/", route).startswith(
        "http://u:***@mlflow:5000/#/experiments/3/runs/abc"
    )
    local = review_link("sqlite:///x/mlflow.db", route)
    assert local.startswith("python -m training ui --tracking-uri sqlite:///x/mlflow.db -> http://127.0.0.1:5000/#/")


@pytest.mark.parametrize("form", ["path", "journal://"])
def test_journal_storage_holds_a_study(tmp_path, form):
    journal = tmp_path / "journal" / "optuna.log"
    url = str(journal) if form == "path" else f"journal://{journal}"
    options = dict(model="nw", dataset="sine", trials=3, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = tune(TuneOptions(**options, storage=url, progress=False, conclude=False))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="nw-sine", storage=storage)
    assert len(study.trials) == 3 and result.conclusion is None and sum(result.states.values()) == 3


def test_the_storage_lock_admits_one_holder_at_a_time(tmp_path):
    url, inside, most = f"sqlite:///{tmp_path / 'optuna.db'}", [0], []

    def hold():
        with storage_lock(url, "conclude:x"):
            inside[0] += 1
            most.append(inside[0])
            time.sleep(0.01)
            inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == [1] * 8


def test_concluding_together_leaves_the_best_by_validation_as_champion(tmp_path):
    """Eight conclusions at once, each registering a candidate and deciding under the study's lock."""
    client = mlflow_store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("toy")
    url, values = f"sqlite:///{tmp_path / 'optuna.db'}", random.Random(0).sample(range(100, 200), 8)
    errors = []

    def conclude(val: int):
        try:
            with storage_lock(url, "conclude:toy"):
                tags = {"val_mse": str(val / 100), "test_mse": str(1 / val)}  # test ranks them the other way
                files = tmp_path / f"model-{val}"  # the version's model files, which the registry checks are there
                files.mkdir()
                (files / "MLmodel").write_text("flavors: {}\n")
                client.create_model_version("toy", source=files.as_uri(), tags=tags)
                registry.promote_best(client, "toy", "mse", "minimize")
        except Exception as error:  # surfaced below: a thread's assertion would be lost
            errors.append(error)

    threads = [threading.Thread(target=conclude, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    champion = client.get_model_version_by_alias("toy", "champion")
    assert float(champion.tags["val_mse"]) == min(values) / 100
