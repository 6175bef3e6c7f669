"""Heartbeat JWS (RFC 7515 compact, EdDSA/Ed25519): signing and strict verification (heartbeat-v1.md §2).

Hand-written rather than delegated to a JOSE library on purpose: the spec fixes the header to
exactly three members and forbids taking the algorithm from the message, which general JOSE
libraries allow; tests prove interoperability with joserfc and PyJWT in both directions.
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeGuard

import pybase64
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.errors import ProtocolError
from protocol.fastpayload import decode_payload
from protocol.keys import AgentKey
from protocol.payload import member_count, validate_payload
from protocol.sharedpayload import Observations, decode_payload_shared, observations_of
from protocol.strictjson import loads_counted, loads_strict
from protocol.timefmt import format_time, parse_time

TYP = "tr7-heartbeat+json"
# §4: "at most 5,000 a request and 16 MiB uncompressed"
MAX_REQUEST_LINES = 5000
MAX_REQUEST_BYTES = 16 * 1024 * 1024
ZERO_HASH = "0" * 64


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET.decode("ascii"))}
# Bits of the last character that carry no data, by the length mod 4; canonical means all zero.
_UNUSED_BITS = {0: 0, 2: 0x0F, 3: 0x03}


def b64url_decode(text: str, rule: str) -> bytes:
    """Unpadded base64url, canonical only (no padding, no stray bits), per RFC 7515 §2."""
    if "=" in text or "+" in text or "/" in text:
        raise ProtocolError(rule, "not unpadded base64url")
    # Checked, not re-encoded and compared (a third of the cost on a 10 kB payload): only the
    # alphabet, a length that is not 1 mod 4, and zero unused bits in the last character are
    # exactly the texts that encoding some bytes gives back. pybase64 (SIMD) rather than
    # binascii: 1.4 us instead of 24 us for a 9 kB payload, the largest cost after the
    # signature; validate=True refuses every byte outside the alphabet (+ and / are refused above).
    unused = _UNUSED_BITS.get(len(text) % 4)
    if unused is None:
        raise ProtocolError(rule, "not base64url")
    if not text.isascii():  # O(1) for a str; the text then goes to pybase64 as it is (no copy)
        raise ProtocolError(rule, "not base64url")
    try:
        if unused and _VALUE[text[-1]] & unused:
            raise ProtocolError(rule, "non-canonical base64url")
        return pybase64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except KeyError as exc:
        raise ProtocolError(rule, "not base64url") from exc
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(rule, "non-canonical base64url") from exc


def token_digest(token: str) -> str:
    """Lowercase hex SHA-256 of the ASCII bytes of a whole compact JWS (the `prev` of the next one)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A heartbeat whose structure has been checked (and, from verify_heartbeat, its signature)."""

    token: str
    kid: str
    seq: int
    prev: str
    time: int  # epoch seconds, UTC
    interval: int
    polls: list[dict[str, Any]]
    observations: list[dict[str, Any]]
    digest: str = field(default="")

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as on the wire (``time`` back in its RFC 3339 form, not epoch seconds)."""
        return {
            "v": 1, "agent": self.kid, "seq": self.seq, "prev": self.prev,
            "time": format_time(self.time), "interval": self.interval,
            "polls": self.polls, "observations": self.observations,
        }


def _split(token: str) -> tuple[str, str, str]:
    if not isinstance(token, str) or not token.isascii():
        raise ProtocolError("jws.format", "a compact JWS is ASCII text")
    # Exactly two dots, found with find/rfind (memchr): str.split walks a 10 kB token character
    # by character, ~3 us of the collector's CPU a heartbeat.
    first, last = token.find("."), token.rfind(".")
    if first == last or token.find(".", first + 1, last) >= 0:
        raise ProtocolError("jws.format", f"a compact JWS has 3 parts, this one {token.count('.') + 1}")
    return token[:first], token[first + 1 : last], token[last + 1 :]


@lru_cache(maxsize=4096)
def _check_header(header_b64: str) -> str:
    # Memoised: a key signs every heartbeat with the same header text, so a batch of 500 lines
    # from 12 agents has 12 distinct headers (exceptions are not cached: a bad one is re-checked).
    header = loads_strict(b64url_decode(header_b64, "jws.header"), "jws.header")
    if not isinstance(header, dict) or set(header) != {"alg", "kid", "typ"}:
        members = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise ProtocolError("jws.header", f"header must have exactly alg, kid, typ; has {members}")
    if header["alg"] != "EdDSA":
        raise ProtocolError("jws.header", f"alg must be EdDSA, not {header['alg']!r}")
    if header["typ"] != TYP:
        raise ProtocolError("jws.header", f"typ must be {TYP}, not {header['typ']!r}")
    kid = header["kid"]
    if not is_kid(kid):
        raise ProtocolError("jws.header", "kid must be 32 lowercase hex characters")
    return kid


def header_kid(token: str) -> str:
    """The `kid` a compact JWS's header names (checked as verification checks it, nothing else):
    to count a line whose payload is refused under the key's provider. Not proof of anything."""
    return _check_header(token.split(".", 1)[0])


def is_kid(value: object) -> TypeGuard[str]:
    """Whether a header's `kid` has the form of one: 32 lowercase hex characters."""
    return isinstance(value, str) and len(value) == 32 and not value.strip("0123456789abcdef")


def _parse(token: str, digest: str = "") -> tuple[Heartbeat, bytes]:
    """Format, header and payload checked, each part decoded once; returns the signature bytes.

    ``digest``, when the caller has it already, is the token's (token_digest), not recomputed."""
    header_b64, payload_b64, sig_b64 = _split(token)
    kid = _check_header(header_b64)
    raw = b64url_decode(payload_b64, "payload")
    fast = decode_payload(raw, kid)
    if fast is not None:
        payload, epoch = fast
    else:
        payload, epoch = _reference_payload(raw, kid)
    return _heartbeat(token, kid, payload, epoch, payload["observations"], digest), _signature(sig_b64)


def parse_shared(token: str, digest: str = "") -> tuple[Heartbeat, Observations, bytes]:
    """_parse with the observations as a shared Observations (memoised by their bytes): the same
    checks in the same order, so the same outcome and, on a rejection, the same rule."""
    header_b64, payload_b64, sig_b64 = _split(token)
    kid = _check_header(header_b64)
    raw = b64url_decode(payload_b64, "payload")
    fast = decode_payload_shared(raw, kid)
    if fast is not None:
        payload, epoch, obs = fast
    else:
        payload, epoch = _reference_payload(raw, kid)
        obs = observations_of(payload["observations"])
    return _heartbeat(token, kid, payload, epoch, [], digest), obs, _signature(sig_b64)


def _signature(sig_b64: str) -> bytes:
    sig = b64url_decode(sig_b64, "jws.signature")
    if len(sig) != 64:
        raise ProtocolError("signature", "an Ed25519 signature has 64 bytes")
    return sig


def _heartbeat(
    token: str, kid: str, payload: Mapping[str, Any], epoch: int, observations: list[dict[str, Any]],
    digest: str,
) -> Heartbeat:
    return Heartbeat(
        token=token, kid=kid, seq=payload["seq"], prev=payload["prev"], time=epoch,
        interval=payload["interval"], polls=payload["polls"], observations=observations,
        digest=digest or token_digest(token),
    )


def _reference_payload(raw: bytes, kid: str) -> tuple[dict[str, Any], int]:
    """The plain path (stdlib JSON, then protocol.payload): decides what the fast one declines."""
    payload, names = loads_counted(raw, "payload")
    try:
        validate_payload(payload, kid)
    except ProtocolError:
        if names is not None:
            loads_strict(raw, "payload")  # a repeated member name is reported first, as always
        raise
    if names is not None and names != member_count(payload):
        payload = loads_strict(raw, "payload")  # a repeated name raises; a '":' in a string does not
    return payload, parse_time(payload["time"], "payload.time")


def parse_unverified(token: str) -> Heartbeat:
    """Check format, header and payload of a heartbeat without checking its signature."""
    return _parse(token)[0]


KeyLookup = Mapping[str, Ed25519PublicKey] | Callable[[str], Ed25519PublicKey | None]


def verify_heartbeat(token: str, keys: KeyLookup, digest: str = "") -> Heartbeat:
    """Strictly verify one heartbeat: format, exact header, payload schema, then the signature.

    ``digest`` may pass token_digest(token) when the caller computed it already."""
    hb, sig = _parse(token, digest)
    _verify_signature(token, hb.kid, sig, keys)
    return hb


def verify_heartbeat_shared(token: str, keys: KeyLookup, digest: str = "") -> tuple[Heartbeat, Observations]:
    """verify_heartbeat for the collector's ingest: accepts and rejects exactly what it does, with
    the same rule, but returns the observations apart, as an immutable Observations shared by
    every heartbeat whose `observations` text is byte-identical (decoded once per distinct text,
    see protocol.sharedpayload). The Heartbeat's own `observations` list is EMPTY (and its
    `payload` therefore incomplete): read them from the Observations."""
    hb, obs, sig = parse_shared(token, digest)
    check_signature(hb, sig, keys)
    return hb, obs


def check_signature(hb: Heartbeat, sig: bytes, keys: KeyLookup) -> None:
    """The signature check of verify_heartbeat_shared, for a heartbeat parse_shared returned
    (the collector's ingest parses a batch first, to find the lines already logged)."""
    _verify_signature(hb.token, hb.kid, sig, keys)


def _verify_signature(token: str, kid: str, sig: bytes, keys: KeyLookup) -> None:
    key = keys.get(kid) if isinstance(keys, Mapping) else keys(kid)
    if key is None:
        raise ProtocolError("kid.unknown", f"no enrolled key with kid {kid}")
    try:
        # The signing input is the token up to its last '.' (_parse checked there are two).
        key.verify(sig, token[: token.rindex(".")].encode("ascii"))
    except InvalidSignature as exc:
        raise ProtocolError("signature", f"signature does not verify with key {kid}") from exc


def sign_heartbeat(key: AgentKey, payload: Mapping[str, Any]) -> str:
    """Sign a payload (validated first: an agent never emits what a verifier would reject)."""
    validate_payload(payload, key.kid)
    header = json.dumps({"alg": "EdDSA", "kid": key.kid, "typ": TYP}, separators=(",", ":"))
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signing_input = f"{b64url_encode(header.encode('ascii'))}.{b64url_encode(body)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


def check_key_window(hb: Heartbeat, enrolled_at: int, revoked_at: int | None) -> None:
    """Reject a heartbeat outside [enrolled_at, revoked_at] of its key (heartbeat-v1.md §4).

    §4, to the letter: rejected when "`time` is before the key's enrolment or after its
    revocation", so both instants are inside (until 2026-12-06 the revocation instant was not,
    and a collector reading §4 literally made bundles this verifier failed).
    """
    if hb.time < enrolled_at:
        raise ProtocolError("key.window", "time is before the key's enrolment")
    if revoked_at is not None and hb.time > revoked_at:
        raise ProtocolError("key.window", "time is after the key's revocation")
