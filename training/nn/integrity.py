"""File digests, and archives verified when a worker loads them: the checkpoint must be the one the archive was
built with."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)
REFUSAL = "refusing to load"  # the log line's marker; `make serve` looks for it to fail fast


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in 4 MiB blocks: checkpoints, archives and users' data files."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class ArchiveIntegrityError(RuntimeError):
    """The checkpoint is not the one the archive was built with."""


def verified_checkpoint(model_dir: str, serialized_file: str, info: dict) -> str:
    """The checkpoint's path, after its sha256 matched the one recorded in model_info.json at archive time."""
    path = os.path.join(model_dir, serialized_file)
    actual, expected = file_sha256(path), info.get("sha256")
    if actual != expected:
        message = (
            f"{REFUSAL} {info.get('name')} version {info.get('version')}: checkpoint sha256 {actual} "
            f"differs from model_info.json's {expected} (the archive was altered after it was built)"
        )
        logger.error(message)
        raise ArchiveIntegrityError(message)
    return path
