"""C2SP signed-note (Ed25519) and tlog-checkpoint: the collector's signed log heads (heartbeat-v1.md §5)."""

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import ProtocolError
from protocol.keys import check_public_raw

ALG_ED25519 = 0x01
EM_DASH = "\u2014"
# c2sp.org/signed-note: verifiers MUST accept at least 16 signatures; bound the work per note.
MAX_SIGNATURES = 100
MAX_NOTE_CHARS = 1 << 20
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")
# At most 20 digits (a uint64 has 20): a longer run made int() raise ValueError past Python's
# 4,300-digit limit, not NoteError, and tr7-audit verify died with a traceback.
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,19})\Z")
_HEX8_RE = re.compile(r"^[0-9a-f]{8}\Z")


class NoteError(ValueError):
    """A note, verifier key or checkpoint that is malformed or does not verify."""


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard alphabet, padded, canonical (re-encoding gives the same text)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise NoteError(f"{what} is not standard padded base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise NoteError("a key name must be a non-empty string")
    if "+" in name or any(c.isspace() for c in name) or _CONTROL_RE.search(name) or "\n" in name:
        raise NoteError(f"key name {name!r} contains a space, a plus or a control character")


def _key_id(name: str, public_raw: bytes) -> bytes:
    """SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4] (c2sp.org/signed-note)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_raw).digest()[:4]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise NoteError("note text must be a string ending in a newline")
    if _CONTROL_RE.search(text):
        raise NoteError("note text contains a control character other than newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError("note text is not valid UTF-8") from exc


class NoteVerifier:
    """An Ed25519 note verifier: a key name and public key, identified by (name, key id)."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_name(name)
        self.name = name
        self.public_key = public_key
        self.key_id = _key_id(name, _raw(public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> "NoteVerifier":
        """Parse ``<name>+<8 lowercase hex key id>+<base64(0x01 || 32-byte key)>`` strictly."""
        # The base64 key may itself contain "+"; name and key id never do.
        parts = vkey.split("+", 2) if isinstance(vkey, str) else []
        if len(parts) != 3:
            raise NoteError("a verifier key has the form <name>+<key id>+<base64 key>")
        name, hex_id, key_b64 = parts
        _check_name(name)
        if not _HEX8_RE.match(hex_id):
            raise NoteError("the key id of a verifier key is 8 lowercase hex digits")
        raw = _b64decode_strict(key_b64, "verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("a verifier key must be 0x01 followed by a 32-byte Ed25519 public key")
        try:
            key = check_public_raw(raw[1:])
        except ProtocolError as exc:
            raise NoteError(f"verifier key: {exc.detail}") from exc
        verifier = cls(name, key)
        if verifier.key_id.hex() != hex_id:
            raise NoteError("the key id of the verifier key does not match its name and key")
        return verifier

    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ALG_ED25519]) + _raw(self.public_key)).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (64 bytes, no key id) is this key's Ed25519 signature of ``message``."""
        if len(signature) != 64:
            return False
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class NoteSigner:
    """An Ed25519 note signer under a key name (the collector's checkpoint key)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._private = private_key
        self._verifier = NoteVerifier(name, private_key.public_key())
        self.key_id = self._verifier.key_id

    def verifier(self) -> NoteVerifier:
        return self._verifier

    def verifier_key(self) -> str:
        return self._verifier.vkey()

    def signature_line(self, text: str) -> str:
        _check_text(text)
        sig = self._private.sign(text.encode("utf-8"))
        return f"{EM_DASH} {self.name} {base64.b64encode(self.key_id + sig).decode('ascii')}\n"

    def sign(self, text: str) -> str:
        """Return the whole signed note: text, a blank line, this key's signature line."""
        return f"{text}\n{self.signature_line(text)}"

    def cosign(self, note: str, current: NoteVerifier) -> str:
        """``note`` with this key's signature added, once ``current`` has verified it (a note that
        does not verify is never vouched for by a second key: NoteError). A note this key has
        signed already comes back unchanged. signed-note allows any number of signatures, and a
        verifier ignores those by keys it does not know: old and new verifier keys both open it."""
        text, _names = open_note(note, [current])
        if any((name, kid) == (self.name, self.key_id) for name, kid, _sig in _parse_note(note)[1]):
            return note
        return note + self.signature_line(text)


def _parse_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a note into its text and (name, key id, signature) triples; NoteError when malformed."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("a note must be valid UTF-8") from exc
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise NoteError("a note is a string of at most 1 MiB")
    if _CONTROL_RE.search(note):
        raise NoteError("a note must not contain control characters other than newline")
    # The text is separated from the signatures by the last empty line of the note.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a note has a blank line between its text and its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if not sig_block.endswith("\n"):
        raise NoteError("a note ends with a signature line and a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note carries at most {MAX_SIGNATURES} signatures here")
    sigs: list[tuple[str, bytes, bytes]] = []
    for line in lines:
        if not line.startswith(EM_DASH + " "):
            raise NoteError(f"signature line does not start with an em dash and a space: {line[:40]!r}")
        rest = line[2:].split(" ")
        if len(rest) != 2:
            raise NoteError("a signature line is: em dash, space, key name, space, base64 signature")
        name, sig_b64 = rest
        _check_name(name)
        raw = _b64decode_strict(sig_b64, "signature")
        if len(raw) < 5:
            raise NoteError("a signature is a 4-byte key id followed by the signature bytes")
        sigs.append((name, raw[:4], raw[4:]))
    return text, sigs


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> tuple[str, list[str]]:
    """Verify a note per c2sp.org/signed-note; return (text, names of the keys that verified it).

    Signatures by unknown keys (name and key id not both matching a verifier) are ignored; a
    signature by a known key that fails rejects the whole note; so does having no verified one.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if (v.name, v.key_id) in known:
            raise NoteError(f"two verifiers share key name {v.name} and key id {v.key_id.hex()}")
        known[(v.name, v.key_id)] = v
    text, sigs = _parse_note(note)
    message = text.encode("utf-8")
    verified: list[str] = []
    for name, key_id, sig in sigs:
        verifier = known.get((name, key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, sig):
            raise NoteError(f"the signature by known key {name} does not verify")
        if name not in verified:
            verified.append(name)
    if not verified:
        raise NoteError("no signature by a known key")
    return text, verified


@dataclass(frozen=True)
class Checkpoint:
    """A c2sp.org/tlog-checkpoint note text: origin, tree size, root hash, optional extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise NoteError("a checkpoint origin is a non-empty single line")
        if type(self.size) is not int or not 0 <= self.size < 2**64:
            raise NoteError("a checkpoint size is an integer from 0 to 2^64-1")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise NoteError("a checkpoint root is a 32-byte SHA-256 hash")
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or "\n" in ext:
                raise NoteError("an extension line is a non-empty single line")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        text = "".join(f"{line}\n" for line in lines)
        _check_text(text)
        return text

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        """Parse a checkpoint note text strictly (no leading zeros, canonical base64, no empty lines)."""
        _check_text(text)
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise NoteError("a checkpoint is at least three non-empty lines")
        origin, size_text, root_b64, *extensions = lines
        if not _SIZE_RE.match(size_text):  # then within 2^64 by __post_init__
            raise NoteError(f"tree size {size_text[:40]!r} is not decimal without leading zeros, "
                            "at most 20 digits")
        root = _b64decode_strict(root_b64, "root hash")
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    return signer.sign(cp.to_text())


def verify_checkpoint(note: str | bytes, verifier: NoteVerifier) -> Checkpoint:
    """Open a checkpoint note with ``verifier`` and parse its text; NoteError otherwise."""
    text, _ = open_note(note, [verifier])
    return Checkpoint.parse(text)
