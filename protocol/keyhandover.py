"""The key hand-over statement: a signed note by which a retired collector key names its successor.

Written by `tr7-collector key rotate` (collector/keyrotation.py), read by `tr7-audit handover`.
Not part of heartbeat-v1.md (which gives a bundle one verifier key and says nothing of
rotation); it is a plain C2SP signed-note, so any signed-note implementation checks it:

    tr7-collector key rotation
    origin <collector origin>
    old <old verifier key>
    new <new verifier key>
    at <RFC 3339 UTC time>

signed by the old key and by the new one. An auditor who pinned the old key checks the statement
with it and pins the new key: the chain of trust stays unbroken without a second channel.
"""

from dataclasses import dataclass

from protocol.note import NoteError, NoteSigner, NoteVerifier, open_note
from protocol.timefmt import format_time, parse_time

TITLE = "tr7-collector key rotation"


@dataclass(frozen=True)
class Handover:
    origin: str
    old: str  # verifier keys (name+keyid+base64)
    new: str
    at: int  # epoch seconds


def handover_text(origin: str, old: str, new: str, at: int) -> str:
    return f"{TITLE}\norigin {origin}\nold {old}\nnew {new}\nat {format_time(at)}\n"


def sign_handover(old: NoteSigner, new: NoteSigner, origin: str, at: int) -> str:
    """The statement, signed by the retiring key and by its successor (proving the holder has it)."""
    text = handover_text(origin, old.verifier_key(), new.verifier_key(), at)
    return old.sign(text) + new.signature_line(text)


def open_handover(note: str, old: str) -> Handover:
    """The hand-over ``note`` from the verifier key ``old``: it must name ``old``, and be signed by
    both it and the key it names (NoteError otherwise, saying which)."""
    old_verifier = NoteVerifier.from_vkey(old)
    text, _ = open_note(note, [old_verifier])
    lines = text.split("\n")[:-1]
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    if lines[:1] != [TITLE] or len(lines) != 5 or list(fields) != ["origin", "old", "new", "at"]:
        raise NoteError(f"not a key hand-over statement: its text is {TITLE!r}, then origin, old, new, at")
    if fields["old"] != old:
        raise NoteError(f"the statement hands over from {fields['old']}, not from {old}")
    try:
        new_verifier = NoteVerifier.from_vkey(fields["new"])
        at = parse_time(fields["at"])
    except ValueError as exc:
        raise NoteError(f"the statement's new key or time is malformed: {exc}") from exc
    if (new_verifier.name, new_verifier.key_id) == (old_verifier.name, old_verifier.key_id):
        raise NoteError("the statement hands a key over to itself")
    try:
        open_note(note, [new_verifier])
    except NoteError as exc:
        raise NoteError(f"the new key {fields['new']} did not sign the statement ({exc})") from exc
    return Handover(fields["origin"], old, fields["new"], at)
