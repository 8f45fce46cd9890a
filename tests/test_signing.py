"""Signed archives: a manifest of every member's sha256, signed with Ed25519 and verified before serving."""

import json
import shutil
import struct
import zipfile
import zlib

import pytest

from training.serving import signing
from training.serving.signing import ArchiveSignatureError, UnsignedArchiveError, verify_archive

MEMBERS = {"attention_handler.py": b"class Handler: ...\n", "checkpoint.pt": b"\x00weights", "model_info.json": b"{}"}


@pytest.fixture
def keys(tmp_path, monkeypatch):
    folder = tmp_path / "keys"
    monkeypatch.setenv("ATTENTION_SERVE_KEYS", str(folder))
    return folder


def build(path, members=MEMBERS):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def rewritten(path, change):
    """The archive with its members changed by `change(dict)`, the signed manifest kept as it was."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    return build(path.with_name("changed.mar"), members).read_bytes()


def test_a_signed_archive_verifies_and_the_key_is_private(keys, tmp_path):
    archive = build(tmp_path / "nw-sine.mar")
    digest = signing.sign_archive(archive)
    manifest = verify_archive(archive.read_bytes(), "nw-sine.mar")
    assert set(manifest["members"]) == set(MEMBERS) and len(digest) == 64
    assert (keys / signing.PRIVATE_KEY).stat().st_mode & 0o777 == 0o600 and keys.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda m: m.update({"attention_handler.py": b"import os; os.system('id')\n"}), "attention_handler.py"),
        (lambda m: m.update({"checkpoint.pt": b"\x00other weights"}), "checkpoint.pt"),
        (lambda m: m.update({"evil.py": b"print('hi')\n"}), "evil.py"),
        (lambda m: m.pop("model_info.json"), "model_info.json"),
    ],
)
def test_a_changed_added_or_removed_member_is_refused_by_name(keys, tmp_path, change, named):
    archive = build(tmp_path / "nw-sine.mar")
    signing.sign_archive(archive)
    with pytest.raises(ArchiveSignatureError, match=f"member {named} was"):
        verify_archive(rewritten(archive, change), "nw-sine.mar")


def test_a_forged_manifest_or_an_untrusted_key_is_refused_naming_the_key(keys, tmp_path, monkeypatch):
    archive = build(tmp_path / "nw-sine.mar")
    signing.sign_archive(archive)

    def forge(members):  # a manifest that lists the new handler's digest, under the old signature
        manifest = json.loads(members[signing.SIGNATURE])
        members["attention_handler.py"] = b"pass\n"
        manifest["members"]["attention_handler.py"] = signing.hashlib.sha256(b"pass\n").hexdigest()
        members[signing.SIGNATURE] = json.dumps(manifest).encode()

    with pytest.raises(ArchiveSignatureError, match="signature is not valid"):
        verify_archive(rewritten(archive, forge), "nw-sine.mar")

    other = tmp_path / "other-machine"
    monkeypatch.setenv("ATTENTION_SERVE_KEYS", str(other))
    theirs = build(tmp_path / "theirs.mar")
    key = signing.key_id(signing.signing_key().public_key())
    signing.sign_archive(theirs)
    monkeypatch.setenv("ATTENTION_SERVE_KEYS", str(keys))
    signing.signing_key()
    with pytest.raises(ArchiveSignatureError, match=f"signed by key {key}, which is not trusted"):
        verify_archive(theirs.read_bytes(), "theirs.mar")
    (keys / signing.TRUSTED).mkdir()
    shutil.copy(other / signing.PUBLIC_KEY, keys / signing.TRUSTED / "build-machine.pub")
    assert verify_archive(theirs.read_bytes(), "theirs.mar")["key"] == key


def test_an_unsigned_archive_is_refused_with_how_to_sign_it(keys, tmp_path):
    with pytest.raises(UnsignedArchiveError, match="make archive"):
        verify_archive(build(tmp_path / "old.mar").read_bytes(), "old.mar")
    with pytest.raises(ArchiveSignatureError, match="not a readable archive"):
        verify_archive(b"not a zip", "junk.mar")


def front_to_back(data: bytes) -> dict[str, bytes]:
    """The members as a reader that scans local headers from the first byte meets them (TorchServe unpacks
    that way), the last of a name winning."""
    members, at = {}, 0
    while data[at : at + 4] == b"PK\x03\x04":
        method, _, _, _, size, _, name_length, extra_length = struct.unpack("<HHHIIIHH", data[at + 8 : at + 30])
        name = data[at + 30 : at + 30 + name_length].decode()
        start = at + 30 + name_length + extra_length
        raw = data[start : start + size]
        members[name] = zlib.decompress(raw, -15) if method == zipfile.ZIP_DEFLATED else raw
        at = start + size
    return members


def test_what_is_served_is_exactly_what_was_verified_even_with_an_entry_hidden_before_the_index(keys, tmp_path):
    archive = build(tmp_path / "nw-sine.mar")
    signing.sign_archive(archive)
    hidden = build(tmp_path / "evil.mar", {"attention_handler.py": b"import os; os.system('id')\n"}).read_bytes()
    local_entry = hidden[: hidden.index(b"PK\x01\x02")]  # an entry without an index of its own
    genuine = archive.read_bytes()
    index = genuine.index(b"PK\x01\x02")  # placed after the genuine entries, before the index, which moves along
    end = genuine.rindex(b"PK\x05\x06")
    (offset,) = struct.unpack("<I", genuine[end + 16 : end + 20])
    moved = genuine[:end] + genuine[end : end + 16] + struct.pack("<I", offset + len(local_entry)) + genuine[end + 20 :]
    tampered = moved[:index] + local_entry + moved[index:]
    verify_archive(tampered, "nw-sine.mar")  # Python's reader sees the signed members only...
    assert front_to_back(tampered)["attention_handler.py"] != MEMBERS["attention_handler.py"]  # ...a scan does not
    served = signing.rebuilt(tampered)
    assert front_to_back(served) == {**MEMBERS, signing.SIGNATURE: front_to_back(served)[signing.SIGNATURE]}
    verify_archive(served, "nw-sine.mar")


def test_a_signed_archive_of_another_model_or_a_broken_manifest_is_refused(keys, tmp_path):
    from training.serving.store import verified_bytes

    other = build(tmp_path / "nw-sine.mar", {**MEMBERS, "model_info.json": json.dumps({"name": "nw-other"}).encode()})
    signing.sign_archive(other)
    with pytest.raises(ArchiveSignatureError, match="was built as 'nw-other', not 'nw-sine'"):
        verified_bytes(other)
    broken = build(tmp_path / "broken.mar", {**MEMBERS, signing.SIGNATURE: b"[1, 2]"})
    with pytest.raises(ArchiveSignatureError, match="not a signed manifest"):
        verify_archive(broken.read_bytes(), "broken.mar")
    (keys / signing.TRUSTED).mkdir(parents=True)
    (keys / signing.TRUSTED / "junk.pub").write_text("not a key")
    with pytest.raises(ArchiveSignatureError, match="junk.pub is not an Ed25519 public key"):
        signing.trusted_keys()


def test_builds_starting_together_make_one_whole_key_between_them(tmp_path):
    """Each process makes its key and reads back the one that stands: never a half-written file, one key in all."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for round_ in range(3):
            folder = tmp_path / f"keys-{round_}"
            ids = pool.map(key_id_in, [folder] * 8)
            assert len(set(ids)) == 1, ids
            assert sorted(p.name for p in folder.iterdir()) == sorted([signing.PRIVATE_KEY, signing.PUBLIC_KEY])
            assert signing.key_id(signing.signing_key(folder).public_key()) == ids[0]


def key_id_in(folder) -> str:
    return signing.key_id(signing.signing_key(folder).public_key())
