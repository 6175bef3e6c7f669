"""Agent keys: 0600 storage, kid derivation, base64 public keys (heartbeat-v1.md §1)."""

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from protocol.errors import ProtocolError
from protocol.keys import (
    AgentKey,
    kid_of,
    load_or_create_private_key,
    load_private_key,
    load_public_key_b64,
    public_key_b64,
    save_private_key,
)


def test_private_key_file_is_created_0600(tmp_path):
    path = tmp_path / "state" / "agent.key"
    old = os.umask(0o000)  # even with a permissive umask the file must not be readable by others
    try:
        key, created = load_or_create_private_key(path)
    finally:
        os.umask(old)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_private_key(path)
    assert not created_again
    assert again.kid == key.kid


def test_save_then_load_gives_the_same_key(tmp_path):
    key = AgentKey.generate()
    save_private_key(key, tmp_path / "k.pem")
    assert load_private_key(tmp_path / "k.pem").public_raw == key.public_raw
    assert not (tmp_path / "k.pem.tmp").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_a_key_readable_by_others(tmp_path, mode):
    path = tmp_path / "k.pem"
    save_private_key(AgentKey.generate(), path)
    path.chmod(mode)
    with pytest.raises(ProtocolError) as info:
        load_private_key(path)
    assert info.value.rule == "key"


def test_load_refuses_a_non_ed25519_key(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "k.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(ProtocolError):
        load_private_key(path)


def test_kid_is_the_sha256_prefix_of_the_raw_public_key(tmp_path):
    path = tmp_path / "k.pem"
    key, _ = load_or_create_private_key(path)
    # Independently: read the PEM back with cryptography and hash the raw public key ourselves.
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = hashlib.sha256(raw).digest()[:16].hex()
    assert key.kid == expected == kid_of(raw)
    assert len(key.kid) == 32 and key.kid == key.kid.lower()


def test_kid_of_refuses_a_key_that_is_not_32_bytes():
    with pytest.raises(ProtocolError):
        kid_of(b"\x01" * 31)


def test_public_key_base64_round_trip():
    key = AgentKey.generate()
    text = public_key_b64(key.public)
    assert base64.b64decode(text) == key.public_raw and len(text) == 44 and text.endswith("=")
    assert load_public_key_b64(text).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == key.public_raw


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(b"\x07" * 31).decode(),  # 31 bytes
        base64.b64encode(b"\x07" * 33).decode(),  # 33 bytes
        base64.b64encode(b"\xfb" * 32).decode().rstrip("="),  # unpadded
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # url-safe alphabet
        "not base64 at all!",
        "",
    ],
    ids=["31_bytes", "33_bytes", "unpadded", "urlsafe", "garbage", "empty"],
)
def test_public_key_base64_rejects_malformed(text):
    with pytest.raises(ProtocolError) as info:
        load_public_key_b64(text)
    assert info.value.rule == "key"


def test_a_stale_world_readable_temp_file_does_not_leak_its_mode(tmp_path):
    path = tmp_path / "agent.key"
    stale = tmp_path / "agent.key.tmp"
    stale.write_text("left over by a crash")
    stale.chmod(0o644)
    save_private_key(AgentKey.generate(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_private_key(path)


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    """remove_stale_temps: the names replace_file makes, of a pid that no longer runs and older than
    a minute, or of any pid past an hour. A fresh one of a pid dead here may be a writer's in another
    pid namespace; pid 1 or a reused pid looks alive for ever; other names are the operator's."""
    import subprocess

    from protocol.keys import ANY_AGE, DEAD_AGE, remove_stale_temps

    dead = subprocess.Popen(["true"])
    dead.wait()
    now = 1_800_000_000.0
    files = {
        f"agent.key.{dead.pid}.0badf00d.tmp": (DEAD_AGE + 1, False),  # dead and old: removed
        f"agent.key.{dead.pid}.0badf00e.tmp": (DEAD_AGE - 5, True),  # dead but fresh: kept
        f"agent.key.{os.getppid()}.0badf00d.tmp": (ANY_AGE - 5, True),  # alive: kept
        "agent.key.1.0badf00d.tmp": (ANY_AGE + 1, False),  # alive (pid 1) but an hour old: removed
        "agent.key.\u00b3.0badf00d.tmp": (ANY_AGE + 1, True),  # not an ASCII pid: no int(), kept
        "agent.key.20261201.bak.tmp": (ANY_AGE + 1, True),  # the operator's: kept
        f"agent.key.next.{dead.pid}.0badf00d.tmp": (ANY_AGE + 1, True),  # another file's
    }
    for name, (age, _kept) in files.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (now - age, now - age))
    assert remove_stale_temps(tmp_path / "agent.key", now) == 2
    assert {n: (tmp_path / n).exists() for n in files} == {n: kept for n, (_a, kept) in files.items()}
