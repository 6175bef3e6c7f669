"""C2SP signed notes and tlog checkpoints: round trips, the Go reference vector, strict parsing,
and a second, independent verifier written here from the C2SP text."""

import base64
import hashlib
import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.merkle import leaf_hash, root_hash
from protocol.note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_checkpoint,
    verify_checkpoint,
)

# golang.org/x/mod/sumdb/note's documented example: a different implementation's keys and note.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = (GO_TEXT + "\n— PeterNeumann "
           "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
# transparency-dev/formats: a verifier key whose base64 contains a '+'.
PLUS_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"

NAME = "collector.example.net/tr7"


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(NAME, Ed25519PrivateKey.generate())


def _go_signer() -> NoteSigner:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def test_go_reference_note_is_reproduced_byte_for_byte():
    # Ed25519 is deterministic, so the same key and text must give Go's exact note.
    signer = _go_signer()
    assert signer.verifier_key() == GO_VKEY
    assert signer.sign(GO_TEXT) == GO_NOTE


def test_go_reference_note_opens():
    assert open_note(GO_NOTE, [NoteVerifier.from_vkey(GO_VKEY)]) == (GO_TEXT, ["PeterNeumann"])
    with pytest.raises(NoteError):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), [NoteVerifier.from_vkey(GO_VKEY)])


def test_verifier_key_whose_base64_contains_a_plus():
    v = NoteVerifier.from_vkey(PLUS_VKEY)
    assert (v.name, v.key_id.hex(), v.vkey()) == ("TEST", "7997405c", PLUS_VKEY)


def test_sign_and_verify_round_trip(signer):
    text = "line one\n\nline three after an empty line\n"
    note = signer.sign(text)
    verifier = NoteVerifier.from_vkey(signer.verifier_key())
    assert open_note(note, [verifier]) == (text, [NAME])
    assert open_note(note.encode("utf-8"), [verifier]) == (text, [NAME])


def test_verifier_key_string_format(signer):
    vkey = signer.verifier_key()
    m = re.fullmatch(r"([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/]+=*)", vkey)
    assert m is not None, vkey
    name, key_id, key_b64 = m.groups()
    raw = base64.b64decode(key_b64)
    assert name == NAME and raw[0] == 0x01 and len(raw) == 33
    assert key_id == hashlib.sha256(NAME.encode() + b"\n\x01" + raw[1:]).digest()[:4].hex()
    assert signer.key_id.hex() == key_id


def test_signature_line_format(signer):
    note = signer.sign("hello\n")
    assert note.startswith("hello\n\n\u2014 " + NAME + " ")
    sig = base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])
    assert len(sig) == 4 + 64 and sig[:4] == signer.key_id


def test_unknown_signatures_are_ignored(signer):
    stranger = NoteSigner("witness.example.org/w1", Ed25519PrivateKey.generate())
    same_name_other_key = NoteSigner(NAME, Ed25519PrivateKey.generate())
    text = "cosigned\n"
    note = signer.sign(text)
    note += stranger.signature_line(text) + same_name_other_key.signature_line(text)
    note += f"\u2014 {NAME} " + base64.b64encode(b"\xde\xad\xbe\xef" + b"\x00" * 64).decode() + "\n"
    assert open_note(note, [signer.verifier()]) == (text, [NAME])
    both = open_note(note, [signer.verifier(), stranger.verifier()])
    assert both == (text, [NAME, "witness.example.org/w1"])


def test_sixteen_signatures_are_accepted_and_the_count_is_bounded(signer):
    text = "many cosigners\n"
    witnesses = [NoteSigner(f"w{i}.example", Ed25519PrivateKey.generate()) for i in range(16)]
    note = signer.sign(text) + "".join(w.signature_line(text) for w in witnesses)
    names = open_note(note, [w.verifier() for w in witnesses] + [signer.verifier()])[1]
    assert sorted(names) == sorted([NAME] + [w.name for w in witnesses])
    flood = signer.sign(text) + witnesses[0].signature_line(text) * 100
    with pytest.raises(NoteError):
        open_note(flood, [signer.verifier()])


def test_a_bad_signature_by_a_known_key_rejects_the_note(signer):
    witness = NoteSigner("witness.example.org/w1", Ed25519PrivateKey.generate())
    text = "head\n"
    forged = witness.signature_line("another text\n")  # right key, wrong message
    note = signer.sign(text) + forged
    with pytest.raises(NoteError, match="does not verify"):
        open_note(note, [signer.verifier(), witness.verifier()])
    # Not knowing the witness, the same note opens: its signature is just unknown.
    assert open_note(note, [signer.verifier()])[1] == [NAME]


def test_a_note_with_no_known_signature_is_rejected(signer):
    other = NoteSigner("other.example/x", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(signer.sign("x\n"), [other.verifier()])
    with pytest.raises(NoteError):
        open_note(signer.sign("x\n"), [])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n.replace("\u2014 ", "- "),  # hyphen instead of em dash
        lambda n: n.replace("\u2014 ", "\u2014"),  # no space after the dash
        lambda n: n.rstrip("\n"),  # last signature line not terminated
        lambda n: n + "\n",  # trailing empty line
        lambda n: n.replace("\n", "\r\n"),  # control character
        lambda n: n[:-3] + "\n",  # truncated base64
        lambda n: n.replace(f"{NAME} ", f"{NAME}  "),  # two spaces before the signature
    ],
    ids=["no_blank", "hyphen", "no_space", "unterminated", "trailing_blank", "crlf", "bad_b64", "two_spaces"],
)
def test_malformed_notes_are_rejected(signer, mutate):
    note = signer.sign("origin\n42\n")
    with pytest.raises(NoteError):
        open_note(mutate(note), [signer.verifier()])


@pytest.mark.parametrize(
    "vkey",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # key id does not match
        GO_VKEY.replace("c74f20a3", "C74F20A3"),  # uppercase hex
        GO_VKEY.replace("c74f20a3", "c74f20a"),  # 7 hex digits
        GO_VKEY.replace("+ARpc", "+Apc"),  # key not 33 bytes
        GO_VKEY.replace("+ARpc", "+Ahpc"),  # algorithm byte 0x02
        GO_VKEY.rstrip("W"),  # unpadded / truncated base64
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # empty name
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
        "PeterNeumann+c74f20a3",  # no key
    ],
)
def test_malformed_verifier_keys_are_rejected(vkey):
    with pytest.raises(NoteError):
        NoteVerifier.from_vkey(vkey)


def test_signer_refuses_bad_names_and_texts():
    for name in ("", "a b", "a+b", "tab\there"):
        with pytest.raises(NoteError):
            NoteSigner(name, Ed25519PrivateKey.generate())
    s = NoteSigner(NAME, Ed25519PrivateKey.generate())
    for text in ("no final newline", "bell\x07\n", ""):
        with pytest.raises(NoteError):
            s.sign(text)


# --- checkpoints ------------------------------------------------------------------------------

def test_checkpoint_round_trip(signer):
    root = root_hash([leaf_hash(b"a"), leaf_hash(b"b")])
    cp = Checkpoint(f"{NAME}/sp-17/2026-11", 2, root)
    assert cp.to_text() == f"{NAME}/sp-17/2026-11\n2\n{base64.b64encode(root).decode()}\n"
    note = sign_checkpoint(cp, signer)
    assert verify_checkpoint(note, NoteVerifier.from_vkey(signer.verifier_key())) == cp
    with_ext = Checkpoint(cp.origin, 0, root_hash([]), ("ext one", "ext two"))
    assert Checkpoint.parse(with_ext.to_text()) == with_ext


def test_checkpoint_verified_with_the_wrong_key_is_rejected(signer):
    note = sign_checkpoint(Checkpoint("o", 1, leaf_hash(b"x")), signer)
    with pytest.raises(NoteError):
        verify_checkpoint(note, NoteSigner(NAME, Ed25519PrivateKey.generate()).verifier())


ROOT_B64 = base64.b64encode(b"\x11" * 32).decode()
URLSAFE_ROOT_B64 = base64.urlsafe_b64encode(b"\xfb" * 32).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"origin\n007\n{ROOT_B64}\n",  # leading zeros
        f"origin\n+7\n{ROOT_B64}\n",  # sign
        f"origin\n7 \n{ROOT_B64}\n",  # trailing space
        f"origin\n\uff17\n{ROOT_B64}\n",  # non-ASCII digit
        f"origin\n{2**64}\n{ROOT_B64}\n",  # beyond uint64
        f"origin\n{'9' * 5000}\n{ROOT_B64}\n",  # past int()'s 4,300 digits: a ValueError, not a NoteError
        f"origin\n7\n{ROOT_B64.rstrip('=')}\n",  # unpadded base64
        f"origin\n7\n{base64.b64encode(bytes(31)).decode()}\n",  # 31-byte root
        f"origin\n7\n{URLSAFE_ROOT_B64}\n",  # url-safe alphabet
        f"origin\n7\n{ROOT_B64}\n\n",  # empty extension line
        f"\n7\n{ROOT_B64}\n",  # empty origin
        f"origin\n7\n{ROOT_B64}",  # no final newline
        "origin\n7\n",  # two lines
    ],
)
def test_malformed_checkpoints_are_rejected(text):
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_checkpoint_size_zero_is_allowed():
    assert Checkpoint.parse(f"o\n0\n{ROOT_B64}\n").size == 0


# --- an independent verifier from the C2SP text -----------------------------------------------

def _independent_open(note: bytes, vkey: str) -> bytes:
    """c2sp.org/signed-note, written from the text, sharing no code with protocol/.

    vkey = name "+" hex(key id) "+" base64(0x01 || key). The text ends at the last blank line;
    a signature line is U+2014, space, name, space, base64(4-byte key id || 64-byte signature).
    """
    name, hex_id, b64 = vkey.split("+", 2)
    blob = base64.b64decode(b64, validate=True)
    assert blob[0] == 1 and len(blob) == 33
    key_id = hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + blob[1:]).digest()[:4]
    assert key_id == bytes.fromhex(hex_id)
    public = Ed25519PublicKey.from_public_bytes(blob[1:])
    cut = note.rindex(b"\n\n")
    text, sig_lines = note[: cut + 1], note[cut + 2 :]
    verified = False
    for line in sig_lines.decode().splitlines():
        dash, sig_name, sig_b64 = line.split(" ")
        assert dash == "\u2014"
        sig = base64.b64decode(sig_b64, validate=True)
        if sig_name == name and sig[:4] == key_id:
            try:
                public.verify(sig[4:], text)
            except InvalidSignature as exc:
                raise AssertionError("signature by the known key fails") from exc
            verified = True
    assert verified, "no signature by the known key"
    return text


def _independent_checkpoint(text: bytes) -> tuple[str, int, bytes]:
    """c2sp.org/tlog-checkpoint: origin, decimal size, base64 root hash, one per line."""
    origin, size, root = text.decode().split("\n")[:3]
    return origin, int(size), base64.b64decode(root, validate=True)


def test_independent_implementation_verifies_our_checkpoint(signer):
    hashes = [leaf_hash(f"hb{i}".encode()) for i in range(1000)]
    cp = Checkpoint(f"{NAME}/sp-17/2026-11", 1000, root_hash(hashes))
    note = sign_checkpoint(cp, signer)
    text = _independent_open(note.encode("utf-8"), signer.verifier_key())
    assert _independent_checkpoint(text) == (cp.origin, cp.size, cp.root)
    # ...and it is a real verifier: one changed byte of the text fails it.
    with pytest.raises(AssertionError):
        _independent_open(note.replace("1000", "1001").encode(), signer.verifier_key())


def test_independent_implementation_agrees_on_the_go_vector():
    assert _independent_open(GO_NOTE.encode(), GO_VKEY) == GO_TEXT.encode()
