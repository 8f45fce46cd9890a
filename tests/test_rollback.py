"""The served-versions history behind `make rollback`, and what a rollback refuses, without a server (the rollback
itself under load is in test_serving_operations.py)."""

import json
import os
import zipfile

import pytest

from training.serving import history
from training.serving.deploy import deploy, rollout_lock
from training.serving.errors import (
    ArchiveMissingError,
    HistoryError,
    NothingToRollBackError,
    NotRunningError,
    RolloutBusyError,
)
from training.serving.rollback import rollback
from training.serving.signing import UnsignedArchiveError


def test_the_history_follows_the_server_start_rollouts_and_rollbacks(tmp_path):
    history.start_anew(tmp_path, {"nw-sine": "1", "mha-adding": "4"})
    for version in ("2", "2", "3"):  # a version deployed again over itself is not a rollout
        history.record(tmp_path, "nw-sine", history.after_rollout(history.versions(tmp_path, "nw-sine"), version))
    assert history.load(tmp_path) == {"nw-sine": ["1", "2", "3"], "mha-adding": ["4"]}
    assert history.before_last_rollout(tmp_path, "nw-sine") == ["1", "2"]
    history.record(tmp_path, "nw-sine", ["1", "2"])
    assert history.before_last_rollout(tmp_path, "nw-sine") == ["1"]  # a second rollback goes back further
    history.start_anew(tmp_path, {"nw-sine": "3"})
    assert history.load(tmp_path) == {"nw-sine": ["3"]}  # a restarted server has no rollout to undo


def test_the_history_file_is_private_and_replaced_whole(tmp_path):
    history.start_anew(tmp_path, {"nw-sine": "1"})
    path = history.history_path(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600 and json.loads(path.read_text()) == {"nw-sine": ["1"]}
    history.record(tmp_path, "nw-sine", ["1", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]  # no partial file left behind


def test_nothing_earlier_is_named_with_the_version_and_the_file(tmp_path):
    history.start_anew(tmp_path, {"nw-sine": "1"})
    with pytest.raises(NothingToRollBackError) as first:
        history.before_last_rollout(tmp_path, "nw-sine")
    assert "nw-sine version 1" in str(first.value) and str(history.history_path(tmp_path)) in str(first.value)
    with pytest.raises(NothingToRollBackError) as unknown:
        history.before_last_rollout(tmp_path, "mha-adding")
    assert "mha-adding" in str(unknown.value)
    history.history_path(tmp_path).write_text("[1, 2]")
    with pytest.raises(HistoryError) as broken:
        history.load(tmp_path)
    assert "make serve" in str(broken.value)


@pytest.fixture
def recorded_server(tmp_path):
    """A run directory that looks served (this process as the server's pid) with nw-sine 1 then 2 recorded."""
    (tmp_path / "server.pid").write_text(str(os.getpid()))
    (tmp_path / "config.properties").write_text(
        "".join(f"{key}=http://127.0.0.1:9\n" for key in ("inference_address", "management_address", "metrics_address"))
    )
    history.start_anew(tmp_path, {"nw-sine": "1"})
    history.record(tmp_path, "nw-sine", ["1", "2"])
    return tmp_path


def test_a_rollback_without_a_server_says_to_start_one(tmp_path):
    with pytest.raises(NotRunningError) as error:
        rollback("nw-sine", run_dir=tmp_path, mark_registry=False)
    assert "make serve" in str(error.value)


def test_a_rollback_past_the_first_version_says_there_is_nothing_earlier(recorded_server):
    history.record(recorded_server, "nw-sine", ["2"])
    with pytest.raises(NothingToRollBackError) as error:
        rollback("nw-sine", run_dir=recorded_server, mark_registry=False)
    assert "nw-sine version 2" in str(error.value)


def test_a_missing_earlier_copy_is_named(recorded_server):
    with pytest.raises(ArchiveMissingError) as error:
        rollback("nw-sine", run_dir=recorded_server, mark_registry=False)
    assert "nw-sine version 1" in str(error.value) and str(recorded_server / "store") in str(error.value)


def test_an_earlier_copy_that_fails_verification_is_not_registered(recorded_server):
    releases = recorded_server / "store" / "releases"
    releases.mkdir(parents=True)
    with zipfile.ZipFile(releases / "nw-sine-v1.mar", "w") as planted:  # unsigned: not what a rollout wrote
        planted.writestr("model_info.json", json.dumps({"name": "nw-sine", "version": 1}))
    with pytest.raises(UnsignedArchiveError, match="nw-sine-v1.mar"):
        rollback("nw-sine", run_dir=recorded_server, mark_registry=False)


def test_a_second_rollout_of_a_model_under_way_is_refused_and_the_lock_is_released(recorded_server):
    with rollout_lock(recorded_server, "nw-sine"):  # as a deploy in another terminal holds it
        with pytest.raises(RolloutBusyError) as busy:
            rollback("nw-sine", run_dir=recorded_server, mark_registry=False)
        assert "nw-sine" in str(busy.value)
        with pytest.raises(RolloutBusyError):
            deploy("nw-sine", run_dir=recorded_server, model_store=recorded_server, mark_registry=False)
        with pytest.raises(NothingToRollBackError):  # another model goes on
            rollback("mha-adding", run_dir=recorded_server, mark_registry=False)
    with pytest.raises(ArchiveMissingError):  # free again
        rollback("nw-sine", run_dir=recorded_server, mark_registry=False)
