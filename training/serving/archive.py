"""Build `archives/<name>.mar` from the MLflow registry's `@champion` with torch-model-archiver.

The archive is self-contained: the handler, the HTTP contract, the torch-only model package, the
checkpoint (weights + config JSON, loaded with weights_only=True) and `model_info.json` (the registry version it
was built from, who registered it and who made it `@champion`). Before it is signed, the champion's test metrics are
computed again from the data it was tuned on (`training/tracking/retest.py`). The same version with the same settings
gives the same bytes: no build time in any member or in the zip (`signing.write_members`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from training.infra import places, private
from training.nn import bounds, family_of, load_checkpoint, model_kind
from training.nn.integrity import file_sha256
from training.serving.binding import build_tag
from training.serving.signing import sign_archive, write_members
from training.tracking import mlflow_store, registry, retest

ROOT, ARCHIVES, HANDLER = places.ROOT, places.ARCHIVES, places.HANDLER  # declared once, in infra/places
ARCHIVED = "archived"  # registry alias on the version the last archive was built from
MANIFEST = "MAR-INF/MANIFEST.json"  # torch-model-archiver's, with its build time (`createdOn`)
# Serving settings per archive; TorchServe reads them from the model-config YAML.
MODEL_CONFIG = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 32,  # requests per forward pass (dynamic batching)
    "maxBatchDelay": 1,  # ms to wait for a batch to fill: 1 keeps c1 latency low and c64 throughput (make bench, row 6)
    "responseTimeout": 30,  # s per batch
    "startupTimeout": 120,  # s to load the model
    # The handler's request limits and cost budget (training/nn/bounds.py, handlers/types.py `Limits`), written
    # out so an operator sees them in the archive, and 1 torch thread per CPU worker.
    "handler": {
        "max_instances": bounds.MAX_INSTANCES,
        "max_steps": bounds.MAX_STEPS,
        "max_request_mmac": bounds.MAX_REQUEST_MMAC,
        "max_batch_mmac": bounds.MAX_BATCH_MMAC,
        "max_response_bytes": bounds.MAX_RESPONSE_BYTES,
        "torch_threads": 1,
    },
}


@dataclass(frozen=True)
class Checks:
    """What `make archive` confirms before it signs: the champion's test metrics computed again on `data_file`
    (default: the data the version records); `unverified` signs when that data is not at hand (never on a mismatch)."""

    data_file: str | None = None
    unverified: bool = False


def archive_champions(
    name: str | None = None,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    model_config: dict | None = None,
    explain_keys: str | None = None,
    checks: Checks = Checks(),
) -> list[Path]:
    client = mlflow_store.configure(tracking_uri)
    names = [name] if name else registry.champion_names(client)
    if not names:
        raise registry.NoChampionError("no registered model has a @champion yet: run `make tune` first")
    config, out = model_config or MODEL_CONFIG, Path(out_dir or ARCHIVES)
    return [archive_champion(client, n, out, config, explain_keys=explain_keys, checks=checks) for n in names]


def archive_champion(
    client,
    name: str,
    out_dir: Path,
    model_config: dict,
    archive_name: str | None = None,
    handler: Path = HANDLER,
    explain_keys: str | None = None,
    checks: Checks = Checks(),
) -> Path:
    """`archive_name` and `handler` let benchmarks pack variants (unbatched, bare baseline) of a champion.
    `explain_keys` (values | index | none): what NW explanations reveal of the training rows; by default the
    rows' values for built-in data sets, only their index (file row) for a model tuned on a user's file."""
    archive_name = archive_name or name
    private.owner_only(out_dir)  # NW archives hold training rows
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        version, checkpoint = registry.download_champion(client, name, tmp / "mlflow")
        sha = file_sha256(checkpoint)
        model, _ = load_checkpoint(checkpoint)  # proves it loads with weights_only=True
        retested = confirm_metrics(version, model, checks, sha)
        revealed = explain_keys or default_explain_keys(model)
        model_config = {**model_config, "handler": {**model_config.get("handler", {}), "explain_keys": revealed}}
        payload = stage_payload(tmp / "payload")
        info = model_info(name, archive_name, version, model, sha, revealed, retested)
        (payload / "model_info.json").write_text(json.dumps(info, indent=2))
        config_file = tmp / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config, sort_keys=False))
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name",
            archive_name,
            "--version",
            str(version.version),
            "--serialized-file",
            str(checkpoint),
            "--handler",
            str(handler),
            "--extra-files",
            str(payload),
            "--config-file",
            str(config_file),
            "--export-path",
            str(tmp),
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        # Whole or not at all: the finished archive is renamed over the old one (same folder, one rename), so an
        # interrupted build never leaves a truncated archive where `make serve` would read it.
        dated_by_version(tmp / f"{archive_name}.mar", version)
        digest = sign_archive(tmp / f"{archive_name}.mar")  # a manifest of every member's sha256, signed
        staged = out_dir / f".{archive_name}.mar.partial"
        shutil.copyfile(tmp / f"{archive_name}.mar", staged)
        staged.chmod(0o600)
        os.replace(staged, out_dir / f"{archive_name}.mar")
    if archive_name == name:  # benchmark variants are not what gets served
        registry.mark_version(client, name, version.version, ARCHIVED)
    client.set_model_version_tag(name, str(version.version), build_tag(name, archive_name), digest)  # its latest build
    return out_dir / f"{archive_name}.mar"


def model_info(name: str, archive_name: str, version, model, sha: str, revealed: str, retested: bool) -> dict:
    """What an archive says of itself: the registry version it was built from and who put it there, nothing of the
    build (the same version and settings give the same bytes)."""
    return {
        "name": name,
        "archive": archive_name,  # the file's own name: a benchmark's variant of `name` differs
        "version": str(version.version),
        "run_id": version.run_id,
        "kind": model_kind(model),
        "sha256": sha,
        "explain_keys": revealed,
        "registered_by": version.tags.get("registered_by", ""),
        "champion_by": version.tags.get(f"{registry.CHAMPION}_by", ""),
        "retested": retested,  # False: signed with UNVERIFIED=1, its data not at hand
        **{k: float(v) for k, v in version.tags.items() if k.startswith("test_")},
    }


# What was tested again in this process: the checkpoint, the data it names and the metrics it records.
CONFIRMED: set[tuple] = set()


def confirm_metrics(version, model, checks: Checks, checkpoint_sha256: str) -> bool:
    """Whether the champion's test metrics were computed again (and agree: `retest.MetricMismatchError` otherwise);
    False only when its data is not at hand and `checks.unverified` says to sign all the same. A checkpoint confirmed
    once is not tested again in this process (the benchmarks pack each champion in several variants)."""
    recorded = sorted((k, v) for k, v in version.tags.items() if k.startswith(("test_", "data")))
    confirmed = (checkpoint_sha256, checks.data_file, *recorded)
    if confirmed in CONFIRMED:
        return True
    try:
        retest.retest(version, model, checks.data_file)
        CONFIRMED.add(confirmed)
    except retest.DataNotAtHandError as error:
        if checks.unverified:
            return False
        raise retest.DataNotAtHandError(
            f"{error}; its test metrics cannot be computed again before signing: name the file it was tuned on with "
            "DATA= (--data), or sign without this check with UNVERIFIED=1 (--unverified)"
        ) from None
    return True


def dated_by_version(archive: Path, version) -> None:
    """torch-model-archiver's MANIFEST.json dated by the version's registration, not by the build."""
    registered = time.strftime("%d/%m/%Y %H:%M:%S", time.gmtime(int(version.creation_timestamp) // 1000))
    with zipfile.ZipFile(archive) as built:
        members = [(name, built.read(name)) for name in built.namelist()]
    members = [
        (name, json.dumps({**json.loads(data), "createdOn": registered}, indent=2).encode())
        if name == MANIFEST
        else (name, data)
        for name, data in members
    ]
    write_members(archive, members)


def default_explain_keys(model) -> str:
    """A user's file may be private: its model's explanations name training rows, not their values."""
    from_a_file = family_of(model).explains_training_rows and bool(model.config.key_rows or model.config.feature_names)
    return "index" if from_a_file else "values"


def stage_payload(target: Path) -> Path:
    """The code an archive carries: handlers/ and training/nn/ (torch only), with an empty training/__init__."""
    shutil.copytree(ROOT / "handlers", target / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "training" / "nn", target / "training" / "nn", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "training" / "__init__.py").write_text('"""The torch-only part of the training package, as served."""\n')
    return target
