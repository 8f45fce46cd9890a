"""What `make archive` builds and what serving accepts, without a server: the same version gives the same bytes; a
version's test metric is computed again before it is signed; an archive is served only as the registry's latest build
of its version, never older than `@serving` unless asked."""

import hashlib
import json
import time
import types
import zipfile

import mlflow
import pytest
import yaml
from small_models import small_nw

from training.fit.loop import evaluate
from training.serving import binding
from training.serving.archive import MODEL_CONFIG, Checks, archive_champion
from training.serving.deploy import same_contents
from training.serving.signing import SIGNATURE, rebuilt, sign_archive
from training.serving.store import archive_info, bound_bytes
from training.tracking import mlflow_store, model_log, registry, retest

NAME = "nw-build"


def register(client, model, data, tags: dict[str, str]) -> str:
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id(client, NAME)) as run:
        test = evaluate(model, data.test, data.task)
        number, _ = model_log.log_and_register(model, data, NAME, run.info.run_id, test, "mse", tags)
    return number


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A small NW model on `sine` registered as a conclusion registers it, and made `@champion`."""
    root = tmp_path_factory.mktemp("archive-build")
    uri, client, data, model = small_nw(root)
    tags = {"val_mse": "0.25", "registered_by": "alice@build"} | retest.data_tags(data, 0)
    number = register(client, model, data, tags)
    registry.mark_version(client, NAME, number, registry.CHAMPION)
    return {"uri": uri, "client": client, "number": number, "model": model, "data": data, "root": root}


def build(champion, out, **options):
    return archive_champion(champion["client"], NAME, champion["root"] / out, MODEL_CONFIG, **options)


def test_the_same_version_and_settings_give_the_same_bytes_and_name_who_put_it_there(champion):
    first, second = build(champion, "first"), build(champion, "second")
    assert first.read_bytes() == second.read_bytes()
    assert same_contents(first.read_bytes(), second)  # so `make deploy` takes the rebuilt champion
    version = champion["client"].get_model_version(NAME, champion["number"])
    assert version.tags["archive_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    info = archive_info(first)
    assert info["version"] == champion["number"] and info["retested"] is True and "built" not in info
    assert info["registered_by"] == "alice@build" and info["champion_by"] == registry.actor()
    with zipfile.ZipFile(first) as archive:
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.namelist()[-1] == SIGNATURE
        created = json.loads(archive.read("MAR-INF/MANIFEST.json"))["createdOn"]
    registered = time.strftime("%d/%m/%Y %H:%M:%S", time.gmtime(version.creation_timestamp // 1000))
    assert created == registered  # the version's registration, not the build
    assert rebuilt(first.read_bytes()) == first.read_bytes()  # what the server reads is the registry's build


def test_a_version_whose_weights_do_not_earn_its_test_metric_is_not_signed(champion):
    client = champion["client"]
    source = client.get_model_version(NAME, champion["number"])
    poisoned = client.create_model_version(NAME, source=source.source, tags={**source.tags, "test_mse": "0.0001"})
    registry.mark_version(client, NAME, poisoned.version, registry.CHAMPION)
    try:
        with pytest.raises(retest.MetricMismatchError, match="test mse computed again on sine is"):
            build(champion, "poisoned")
        client.delete_model_version_tag(NAME, poisoned.version, "dataset")  # the data it was tuned on: not recorded
        with pytest.raises(retest.DataNotAtHandError, match="UNVERIFIED=1"):
            build(champion, "poisoned")
        assert not list((champion["root"] / "poisoned").glob("*.mar"))
        signed = build(champion, "unverified", checks=Checks(unverified=True))  # told explicitly: signed, and says so
        assert archive_info(signed)["retested"] is False
    finally:
        registry.mark_version(client, NAME, champion["number"], registry.CHAMPION)


def test_a_file_is_read_for_the_check_only_when_its_sha256_is_the_recorded_one(tmp_path):
    recorded = {"path": str(tmp_path / "gone.csv"), "target": "y", "features": ["x"], "task": "regression"}
    version = types.SimpleNamespace(
        name=NAME, version="9", tags={"data_file": json.dumps(recorded), "data_sha256": "0" * 64, "data_seed": "0"}
    )
    with pytest.raises(retest.DataNotAtHandError, match="is not a file"):
        retest.recorded_data(version)
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    with pytest.raises(retest.DataNotAtHandError, match="0" * 64):
        retest.recorded_data(version, str(other))


def rebuilt_with(archive, change) -> bytes:
    """The archive's members with `change(members)` applied, signed again with the same key."""
    with zipfile.ZipFile(archive) as opened:
        members = {n: opened.read(n) for n in opened.namelist() if n != SIGNATURE}
    change(members)
    out = archive.with_name("changed.mar")
    with zipfile.ZipFile(out, "w") as changed:
        for name, data in members.items():
            changed.writestr(name, data)
    sign_archive(out)
    return out.read_bytes()


def test_only_the_registrys_latest_build_of_a_version_is_served(champion):
    client, archive = champion["client"], build(champion, "bound")
    data, notes = bound_bytes(archive, champion["uri"])
    assert data == archive.read_bytes() and notes == []

    def withhold_rows(members):
        config = yaml.safe_load(members["model-config.yaml"])
        config["handler"]["explain_keys"] = "none"
        members["model-config.yaml"] = yaml.safe_dump(config).encode()

    other = rebuilt_with(archive, withhold_rows)  # signed, but not the build the registry records
    with pytest.raises(binding.ArchiveUnboundError, match="is not the registry's latest build of nw-build version"):
        binding.check_bound(client, other, archive_info(other), "changed.mar")

    def unknown_version(members):
        members["model_info.json"] = json.dumps({**json.loads(members["model_info.json"]), "version": "99"}).encode()

    unknown = rebuilt_with(archive, unknown_version)
    with pytest.raises(binding.ArchiveUnboundError, match="version 99, which the registry at .* does not hold"):
        binding.check_bound(client, unknown, archive_info(unknown), "unknown.mar")


def test_an_archive_older_than_serving_needs_asking_and_one_older_than_the_champion_says_a_newer_one_waits(champion):
    client, archive = champion["client"], build(champion, "older")
    data, info, old = archive.read_bytes(), archive_info(archive), champion["number"]
    source = client.get_model_version(NAME, old)
    newer = client.create_model_version(NAME, source=source.source, tags=source.tags).version
    try:
        registry.mark_version(client, NAME, newer, registry.SERVING)
        with pytest.raises(binding.ArchiveDowngradeError) as refused:
            binding.check_bound(client, data, info, "older.mar")
        assert f"version {old}, older than version {newer} that @serving names" in str(refused.value)
        assert "make rollback" in str(refused.value)
        client.set_registered_model_alias(NAME, registry.CHAMPION, newer)
        notes = binding.check_bound(client, data, info, "older.mar", allow_older=True)
        assert notes and f"a newer champion waits, version {newer}" in notes[0]
    finally:
        client.delete_registered_model_alias(NAME, registry.SERVING)
        registry.mark_version(client, NAME, old, registry.CHAMPION)
