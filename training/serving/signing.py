"""Signed archives: `make archive` signs a manifest of every member's sha256 (Ed25519), and `make serve` and
`make deploy` verify the whole archive before TorchServe sees it.

The signing key is made once, 0600, in a 0700 folder outside the repository and the archives
(`~/.config/attention-serve/`, or `$ATTENTION_SERVE_KEYS`); its public half is trusted, and so is any other
public key put in `trusted/` there (a build machine's). A changed, added or missing member, the handler's code
included, or a signature by a key not trusted, is refused with a line naming the member or the key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from training.infra.processes import private_dir, write_secret

SIGNATURE = "SIGNATURE.json"  # the signed manifest, a member of the archive itself
PRIVATE_KEY, PUBLIC_KEY, TRUSTED = "archive-signing.key", "archive-signing.pub", "trusted"


class ArchiveSignatureError(RuntimeError):
    """An archive whose signature is missing, made by an untrusted key, or no longer matches its members."""


class UnsignedArchiveError(ArchiveSignatureError):
    """An archive with no signature at all (built before archives were signed)."""


def key_dir() -> Path:
    configured = os.environ.get("ATTENTION_SERVE_KEYS")
    return Path(configured) if configured else Path.home() / ".config" / "attention-serve"


def signing_key(folder: Path | None = None) -> Ed25519PrivateKey:
    """This machine's signing key, made on first use (private half 0600, folder 0700)."""
    folder = private_dir(folder or key_dir())
    path = folder / PRIVATE_KEY
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(path, pem.decode())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / PUBLIC_KEY).write_bytes(public)
    return key


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def trusted_keys(folder: Path | None = None) -> dict[str, Ed25519PublicKey]:
    """The public keys whose signatures are accepted: this machine's own and every `trusted/*.pub`."""
    folder = folder or key_dir()
    files = [folder / PUBLIC_KEY, *sorted((folder / TRUSTED).glob("*.pub"))]
    keys = [serialization.load_pem_public_key(f.read_bytes()) for f in files if f.exists()]
    return {key_id(key): key for key in keys}


def member_digests(archive: zipfile.ZipFile) -> dict[str, str]:
    names = [info.filename for info in archive.infolist() if info.filename != SIGNATURE]
    if len(names) != len(set(names)):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ArchiveSignatureError(f"member {twice[0]} appears more than once")
    return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in names}


def canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def sign_archive(path: Path, key: Ed25519PrivateKey | None = None) -> str:
    """Add the signed manifest to the archive at `path`; returns the whole archive's sha256."""
    key = key or signing_key()
    with zipfile.ZipFile(path) as archive:
        manifest = {"format": 1, "key": key_id(key.public_key()), "members": member_digests(archive)}
    signature = base64.b64encode(key.sign(canonical(manifest))).decode()
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(SIGNATURE, json.dumps({**manifest, "signature": signature}, indent=1))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_archive(data: bytes, where: str, trusted: dict[str, Ed25519PublicKey] | None = None) -> dict:
    """The manifest of the archive `data` (named `where` in errors), once every member matches its signed
    sha256 and the signature is by a trusted key; `ArchiveSignatureError` naming what is wrong otherwise."""
    trusted = trusted_keys() if trusted is None else trusted
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ArchiveSignatureError(f"{where} is not a readable archive") from None
    with archive:
        if SIGNATURE not in archive.namelist():
            raise UnsignedArchiveError(
                f"{where} is not signed (built before archives were signed, or by hand): rebuild it with "
                "`make archive`, or serve it as it is with TRUST_UNSIGNED=1"
            )
        signed = json.loads(archive.read(SIGNATURE))
        manifest = {key: signed.get(key) for key in ("format", "key", "members")}
        public = trusted.get(str(manifest["key"]))
        if public is None:
            raise ArchiveSignatureError(
                f"{where} is signed by key {manifest['key']}, which is not trusted here: put its public key in "
                f"{key_dir() / TRUSTED}/"
            )
        try:
            public.verify(base64.b64decode(signed.get("signature", "")), canonical(manifest))
        except (InvalidSignature, ValueError):
            detail = f"{where}: the manifest's signature is not valid for key {manifest['key']}"
            raise ArchiveSignatureError(detail) from None
        actual, listed = member_digests(archive), manifest["members"] or {}
        for name in sorted(set(actual) | set(listed)):
            if name not in listed:
                raise ArchiveSignatureError(f"{where}: member {name} was added after signing")
            if name not in actual:
                raise ArchiveSignatureError(f"{where}: member {name} was removed after signing")
            if actual[name] != listed[name]:
                raise ArchiveSignatureError(f"{where}: member {name} was changed after signing")
    return manifest
