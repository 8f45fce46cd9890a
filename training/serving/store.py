"""A server's private model store: the verified copies of the archives it serves, which TorchServe reads.

`make serve`, `make deploy` and `make rollback` read an archive once, verify its signature and every member, check
that the registry names it its latest build (`binding.py`), and hand only those bytes on: what was checked is what
gets served.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

from training.infra.processes import private_dir
from training.serving.binding import check_bound
from training.serving.signing import SIGNATURE, ArchiveSignatureError, UnsignedArchiveError, rebuilt, verify_archive
from training.tracking import mlflow_store

STORE = "store"  # under the run directory: the verified archives TorchServe reads
RELEASES = "releases"  # under the store: each rollout's verified copy, <name>-v<N>.mar


def private_store(run_dir: Path, reset: bool = False) -> Path:
    """The server's own model store (0700): verified copies of the archives it serves and their releases."""
    store = run_dir / STORE
    if reset and store.exists():
        shutil.rmtree(store)
    private_dir(store / RELEASES)
    return private_dir(store)


def archive_info(archive: Path | bytes) -> dict:
    """model_info.json of an archive (a file, or its bytes): name, version, run id, sha256."""
    with zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive) as opened:
        return json.loads(opened.read("model_info.json"))


def verified_bytes(archive: Path, trust_unsigned: bool = False, built_as: str | None = None) -> bytes:
    """The archive's bytes once its signature and every member are verified (read once: what was checked is
    what gets served), and it was built as `built_as` (default: its file name; a release copy is named
    `<name>-v<N>.mar`). Unsigned archives pass only with `trust_unsigned`."""
    data = archive.read_bytes()
    try:
        verify_archive(data, str(archive))
    except UnsignedArchiveError:
        if not trust_unsigned:
            raise
    info = archive_info(data)
    expected = built_as or archive.stem
    recorded = info.get("archive", info.get("name"))  # archives from before variants named only the model
    if recorded != expected:
        raise ArchiveSignatureError(f"{archive} was built as {recorded!r}, not {expected!r}")
    return rebuilt(data)


def bound_bytes(
    archive: Path, tracking_uri: str | None, trust_unsigned: bool = False, allow_older: bool = False
) -> tuple[bytes, list[str]]:
    """`verified_bytes`, once the registry at `tracking_uri` names them its latest build of their version
    (`binding.py`; an unsigned archive served with `trust_unsigned` predates builds recorded in the registry), and the
    lines to show about them."""
    data = verified_bytes(archive, trust_unsigned)
    with zipfile.ZipFile(io.BytesIO(data)) as opened:
        if SIGNATURE not in opened.namelist():
            return data, []
    client = mlflow_store.configure(tracking_uri)
    return data, check_bound(client, data, archive_info(data), str(archive), allow_older)
