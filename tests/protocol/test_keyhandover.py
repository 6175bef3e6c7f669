"""The key hand-over statement (protocol/keyhandover.py) and `tr7-audit handover`: an auditor who
pinned the collector's old key reaches the new one through statements both keys signed, and
nothing else leads there."""

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.cli import main as audit_main
from protocol.keyhandover import handover_text, open_handover, sign_handover
from protocol.note import NoteError, NoteSigner

AT = 1_790_000_000


def _signer() -> NoteSigner:
    return NoteSigner("collector.test", Ed25519PrivateKey.generate())


def test_a_statement_names_the_new_key_both_keys_signed() -> None:
    k1, k2 = _signer(), _signer()
    got = open_handover(sign_handover(k1, k2, "collector.test", AT), k1.verifier_key())
    assert (got.old, got.new, got.at) == (k1.verifier_key(), k2.verifier_key(), AT)
    assert got.origin == "collector.test"


@pytest.mark.parametrize(
    "case, said",
    [
        ("pinned another key", "no signature by a known key"),
        ("new key did not sign", "did not sign the statement"),
        ("text altered", "does not verify"),
        ("names another old key", "hands over from"),
        ("to itself", "to itself"),
        ("not a statement", "not a key hand-over statement"),
    ],
)
def test_nothing_else_hands_over(case: str, said: str) -> None:
    k1, k2, k3 = _signer(), _signer(), _signer()
    pinned = k1.verifier_key()
    note = sign_handover(k1, k2, "collector.test", AT)
    if case == "pinned another key":
        pinned = k3.verifier_key()
    elif case == "new key did not sign":
        note = k1.sign(handover_text("collector.test", k1.verifier_key(), k2.verifier_key(), AT))
    elif case == "text altered":
        note = note.replace(f"new {k2.verifier_key()}", f"new {k3.verifier_key()}")
    elif case == "names another old key":
        text = handover_text("collector.test", k3.verifier_key(), k2.verifier_key(), AT)
        note = k1.sign(text) + k2.signature_line(text)
    elif case == "to itself":
        text = handover_text("collector.test", k1.verifier_key(), k1.verifier_key(), AT)
        note = k1.sign(text)
    else:
        note = k1.sign("hello\n") + k2.signature_line("hello\n")
    with pytest.raises(NoteError, match=said):
        open_handover(note, pinned)


def test_tr7_audit_handover_follows_statements_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    k1, k2, k3 = _signer(), _signer(), _signer()
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.write_text(sign_handover(k1, k2, "collector.test", AT))
    s2.write_text(sign_handover(k2, k3, "collector.test", AT + 86400))
    assert audit_main(["handover", "--collector-key", k1.verifier_key(), str(s1), str(s2)]) == 0
    out = capsys.readouterr()
    assert out.out == k3.verifier_key() + "\n"
    assert f"{k1.verifier_key()} -> {k2.verifier_key()} at 2026-09-21T" in out.err
    # out of order, the second statement does not hand over from the pinned key: exit 1, named
    assert audit_main(["handover", "--collector-key", k1.verifier_key(), str(s2), str(s1)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and f"tr7-audit: {s2}: " in out.err
    assert audit_main(["handover", "--collector-key", k1.verifier_key(), str(tmp_path / "none")]) == 1
    assert "No such file" in capsys.readouterr().err
    big = tmp_path / "big"
    big.write_text(s1.read_text() + "x" * (1 << 20))
    assert audit_main(["handover", "--collector-key", k1.verifier_key(), str(big)]) == 1
    assert "at most 1 MiB" in capsys.readouterr().err
