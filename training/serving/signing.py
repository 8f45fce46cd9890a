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

from training.infra.processes import private_dir, write_whole
from training.nn.integrity import file_sha256
from training.serving.errors import ArchiveRefusedError

SIGNATURE = "SIGNATURE.json"  # the signed manifest, a member of the archive itself
EPOCH = (1980, 1, 1, 0, 0, 0)  # every member's date (zip's earliest): no build time in an archive's bytes
PRIVATE_KEY, PUBLIC_KEY, TRUSTED = "archive-signing.key", "archive-signing.pub", "trusted"


class ArchiveSignatureError(ArchiveRefusedError):
    """An archive whose signature is missing, made by an untrusted key, or no longer matches its members."""


class UnsignedArchiveError(ArchiveSignatureError):
    """An archive with no signature at all (built before archives were signed)."""


def key_dir() -> Path:
    configured = os.environ.get("ATTENTION_SERVE_KEYS")
    return Path(configured) if configured else Path.home() / ".config" / "attention-serve"


def signing_key(folder: Path | None = None) -> Ed25519PrivateKey:
    """This machine's signing key, made on first use (private half 0600, folder 0700); two builds starting
    together make one key between them."""
    folder = folder or key_dir()
    try:
        private_dir(folder)
        path = folder / PRIVATE_KEY
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_whole(path, pem, replace=False)  # the first build's key stands, whole
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not (folder / PUBLIC_KEY).exists() or (folder / PUBLIC_KEY).read_bytes() != public:
            write_whole(folder / PUBLIC_KEY, public)
    except (OSError, ValueError) as error:
        raise ArchiveSignatureError(
            f"cannot use the archive signing key in {folder} ({error}): set ATTENTION_SERVE_KEYS to a folder of yours"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArchiveSignatureError(f"{folder / PRIVATE_KEY} is not an Ed25519 key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def trusted_keys(folder: Path | None = None) -> dict[str, Ed25519PublicKey]:
    """The public keys whose signatures are accepted: this machine's own and every `trusted/*.pub`."""
    folder = folder or key_dir()
    keys = {}
    for file in [folder / PUBLIC_KEY, *sorted((folder / TRUSTED).glob("*.pub"))]:
        if not file.exists():
            continue
        try:
            key = serialization.load_pem_public_key(file.read_bytes())
        except ValueError:
            key = None
        if not isinstance(key, Ed25519PublicKey):
            raise ArchiveSignatureError(f"{file} is not an Ed25519 public key in PEM form")
        keys[key_id(key)] = key
    return keys


def member_digests(archive: zipfile.ZipFile) -> dict[str, str]:
    names = [info.filename for info in archive.infolist() if info.filename != SIGNATURE]
    if len(names) != len(set(names)):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ArchiveSignatureError(f"member {twice[0]} appears more than once")
    return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in names}


def canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def write_members(target: Path | io.BytesIO, members: list[tuple[str, bytes]]) -> None:
    """A zip of `members` in the order given, each with the same date, permissions and compression: the same
    members give the same bytes (Ed25519 signatures are deterministic too), so a build names its contents only."""
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.compress_type, info.create_system, info.external_attr = zipfile.ZIP_DEFLATED, 3, 0o100644 << 16
            archive.writestr(info, data)


def sign_archive(path: Path, key: Ed25519PrivateKey | None = None) -> str:
    """Write the archive at `path` again, its members sorted by name and the signed manifest last; returns the
    whole archive's sha256."""
    key = key or signing_key()
    with zipfile.ZipFile(path) as archive:
        members = sorted((n, archive.read(n)) for n in dict.fromkeys(archive.namelist()) if n != SIGNATURE)
        manifest = {"format": 1, "key": key_id(key.public_key()), "members": member_digests(archive)}
    signature = base64.b64encode(key.sign(canonical(manifest))).decode()
    signed = json.dumps({**manifest, "signature": signature}, indent=1, sort_keys=True).encode()
    write_members(path, [*members, (SIGNATURE, signed)])
    return file_sha256(path)


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
        try:
            signed = json.loads(archive.read(SIGNATURE))
        except ValueError:
            signed = None
        if not isinstance(signed, dict) or not isinstance(signed.get("members"), dict):
            raise ArchiveSignatureError(f"{where}: {SIGNATURE} is not a signed manifest")
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


def rebuilt(data: bytes) -> bytes:
    """The archive written anew from the members its index lists, nothing else: a reader that scans entries
    front to back (TorchServe unpacks that way) then meets exactly what was verified, never an entry hidden
    before the index. An archive `sign_archive` wrote comes back byte for byte."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        write_members(out, [(info.filename, source.read(info.filename)) for info in source.infolist()])
    return out.getvalue()
