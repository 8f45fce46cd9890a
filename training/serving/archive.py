"""Build `archives/<name>.mar` from the MLflow registry's `@champion` with torch-model-archiver.

The archive is self-contained: the handler, the HTTP contract, the torch-only model package, the
checkpoint (weights + config JSON, loaded with weights_only=True) and `model_info.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from training.infra import places, private
from training.nn import bounds, family_of, load_checkpoint, model_kind
from training.nn.integrity import file_sha256
from training.serving.signing import sign_archive
from training.tracking import mlflow_store, registry

ROOT, ARCHIVES, HANDLER = places.ROOT, places.ARCHIVES, places.HANDLER  # declared once, in infra/places
ARCHIVED = "archived"  # registry alias on the version the last archive was built from
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


def archive_champions(
    name: str | None = None,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    model_config: dict | None = None,
    explain_keys: str | None = None,
) -> list[Path]:
    client = mlflow_store.configure(tracking_uri)
    names = [name] if name else registry.champion_names(client)
    if not names:
        raise registry.NoChampionError("no registered model has a @champion yet: run `make tune` first")
    config = model_config or MODEL_CONFIG
    return [archive_champion(client, n, Path(out_dir or ARCHIVES), config, explain_keys=explain_keys) for n in names]


def archive_champion(
    client,
    name: str,
    out_dir: Path,
    model_config: dict,
    archive_name: str | None = None,
    handler: Path = HANDLER,
    explain_keys: str | None = None,
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
        revealed = explain_keys or default_explain_keys(model)
        model_config = {**model_config, "handler": {**model_config.get("handler", {}), "explain_keys": revealed}}
        payload = stage_payload(tmp / "payload")
        info = {
            "name": name,
            "archive": archive_name,  # the file's own name: a benchmark's variant of `name` differs
            "version": str(version.version),
            "run_id": version.run_id,
            "kind": model_kind(model),
            "sha256": sha,
            "explain_keys": revealed,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: float(v) for k, v in version.tags.items() if k.startswith("test_")},
        }
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
        digest = sign_archive(tmp / f"{archive_name}.mar")  # a manifest of every member's sha256, signed
        staged = out_dir / f".{archive_name}.mar.partial"
        shutil.copyfile(tmp / f"{archive_name}.mar", staged)
        staged.chmod(0o600)
        os.replace(staged, out_dir / f"{archive_name}.mar")
    if archive_name == name:  # benchmark variants are not what gets served
        registry.mark_version(client, name, version.version, ARCHIVED)
        client.set_model_version_tag(name, str(version.version), "archive_sha256", digest)
    return out_dir / f"{archive_name}.mar"


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
