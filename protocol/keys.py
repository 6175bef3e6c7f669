"""Ed25519 agent keys: generation, 0600 storage, `kid`, base64 public keys (heartbeat-v1.md §1)."""

import base64
import binascii
import errno
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_core_ed25519_is_valid_point

from protocol.errors import ProtocolError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, _RAW_PUB)


def kid_of(public_raw: bytes) -> str:
    """Lowercase hex of the first 16 bytes of SHA-256(raw 32-byte public key)."""
    if len(public_raw) != 32:
        raise ProtocolError("key", f"an Ed25519 public key has 32 bytes, not {len(public_raw)}")
    return hashlib.sha256(public_raw).hexdigest()[:32]


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def check_public_raw(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key that only its private key's holder can sign for, else ProtocolError.

    RFC 8032 verification (OpenSSL's, any JOSE library's) accepts any point that decodes; under a
    small-order key such as the identity, ``R = identity, S = 0`` verifies for every message, so
    anyone could sign as that agent, and a mixed-order key lets cofactored and cofactorless
    verifiers disagree on one signature. A generated key is always a canonical point of the
    prime-order subgroup: libsodium's check (canonical, on the curve, not of small order, in
    the prime-order subgroup) refuses every other key, at enrolment and in an audit bundle.
    """
    if len(raw) != 32:
        raise ProtocolError("key", f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    if not crypto_core_ed25519_is_valid_point(raw):
        raise ProtocolError(
            "key.weak",
            "public key is not a canonical Ed25519 point of prime order (a small-order, mixed-order "
            "or non-canonical key lets others forge its signatures)",
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key_b64(text: str) -> Ed25519PublicKey:
    """Standard alphabet, padded, exactly 32 bytes, a key no one else can sign for (check_public_raw)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as exc:
        raise ProtocolError("key", "public key is not standard padded base64") from exc
    if len(raw) != 32 or base64.b64encode(raw).decode() != text.strip():
        raise ProtocolError("key", "public key must be base64 of exactly 32 raw bytes")
    return check_public_raw(raw)


@dataclass(frozen=True)
class AgentKey:
    """An Ed25519 key pair with its wire identity."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_raw(self) -> bytes:
        return raw_public(self.public)

    @property
    def kid(self) -> str:
        return kid_of(self.public_raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    @classmethod
    def generate(cls) -> "AgentKey":
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def save_private_key(key: AgentKey, path: Path) -> None:
    """Write PKCS#8 PEM with mode 0600 from the first byte (never world-readable, even briefly)."""
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    replace_file(pem, path)


def replace_file(data: bytes, path: Path, owner: tuple[int, int] | None = None) -> None:
    """Put ``data`` at ``path`` whole (mode 0600), through a new file of this process's own:
    never written through a link someone planted at ``path`` or beside it. ``owner``: (uid, gid)
    the file gets before it appears (root writing a file a service must read and write again)."""
    os.replace(_written(data, path, owner), path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """fsync a directory: a file created or renamed in it is there after a power cut (POSIX asks
    for it; ext4 and XFS mostly do it anyway, other file systems may not). Best effort where a
    directory cannot be opened for it (some network file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):  # a directory it cannot fsync
            raise
    finally:
        os.close(fd)


def _written(data: bytes, path: Path, owner: tuple[int, int] | None = None) -> Path:
    """``data`` in a new 0600 file beside ``path``, synced: a name of this process's own (several
    processes starting together on one data directory each wrote and renamed one shared temp
    file, and one of them crashed), created exclusively, never through a planted symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:  # through the descriptor: the name may be another file by now
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


# Ages past which a temporary file of _written is taken as left behind: a writer renames its file
# milliseconds after making it. DEAD_AGE for a pid that no longer runs here: a writer in another pid
# namespace (a container sharing the volume) may show a pid dead here while it writes. ANY_AGE
# whatever the pid: one that looks alive here may be a reused pid, or pid 1 of a container.
DEAD_AGE, ANY_AGE = 60.0, 3600.0


def remove_stale_temps(path: Path, now: float | None = None) -> int:
    """Remove the files _written left beside ``path`` in processes that died before their rename
    (a SIGKILL, the OOM killer): only names _written makes (``NAME.<pid>.<8 hex>.tmp``), of a pid
    that no longer runs and older than DEAD_AGE, or older than ANY_AGE, so that no live process
    loses the file it is writing. Returns how many were removed."""
    removed = 0
    now = time.time() if now is None else now
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]{1,10})\.[0-9a-f]{8}\.tmp\Z")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return 0
    for name in names:
        m = pattern.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            age = now - os.lstat(path.parent / name).st_mtime
            if age < ANY_AGE and (age < DEAD_AGE or _alive(int(m.group(1)))):
                continue
            os.unlink(path.parent / name)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass  # another user's live process, or no pid at all: left to ANY_AGE
    return True


def create_file_once(data: bytes, path: Path) -> bool:
    """Write ``path`` whole unless it exists (then leave it): True if this call created it. The
    file appears complete or not at all, and of processes racing, exactly one wins."""
    tmp = _written(data, path)
    try:
        os.link(tmp, path)  # fails if another process got there first
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    sync_dir(path.parent)
    return True


def load_private_key(path: Path) -> AgentKey:
    """Load a PEM Ed25519 private key; refuse one readable by group or others."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ProtocolError("key", f"{path} has mode {mode:o}; a private key must be 0600")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError("key", f"{path} does not hold an Ed25519 private key")
    return AgentKey(key)


def load_or_create_private_key(path: Path) -> tuple[AgentKey, bool]:
    """Return the key at ``path``, creating it when missing; the flag says whether it was created."""
    if path.exists():
        return load_private_key(path), False
    key = AgentKey.generate()
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if create_file_once(pem, path):
        return key, True
    return load_private_key(path), False  # another process created it meanwhile: theirs stands
