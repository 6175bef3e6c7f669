"""The collector's bearer token and CA bundle, checked and fingerprinted by content; redirects named."""

import hashlib
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from adapters.credentials import SecretError, read_secret

if TYPE_CHECKING:  # agent.config imports this module
    from agent.config import AgentSettings


class CollectorFileError(SecretError):
    """A token or CA file whose content cannot be used. ``detail`` never holds the secret."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"agent.{key}: {detail}")
        self.key, self.detail = key, detail


def read_token(token_file: str) -> str:
    """The bearer token, surrounding whitespace stripped (a pasted blank, a CRLF). httpx refused
    anything else in the header with an error quoting the whole `Bearer <token>` value, which was
    printed and logged at every retry; a BOM or another non-ASCII character gave a traceback."""
    token = (read_secret(None, token_file, "agent.token_file") or "").strip()
    if not token:  # no token: sent without one (config.py says so); earlier releases took the file
        return ""
    if token.startswith("\ufeff"):
        raise CollectorFileError("token_file", f"{token_file}: the token starts with a byte-order mark "
                                 "(BOM): save the file as plain ASCII, without one")
    for i, ch in enumerate(token, 1):
        if not "\x21" <= ch <= "\x7e":
            kind = "a non-ASCII character" if ord(ch) > 0x7E else "a blank or a control character"
            # the position only: the token itself stays out of every message
            raise CollectorFileError("token_file", f"{token_file}: the token has {kind} at position {i} "
                                     "(a bearer token is printable ASCII without blanks)")
    return token


def ca_bundle(ca_file: str) -> bytes:
    """The CA bundle's bytes, after loading it as the TLS client will: a file that is no PEM bundle
    (a DER .crt, a key) passed validation and then gave only OpenSSL's error, naming no file."""
    try:
        data = Path(ca_file).read_bytes()
    except FileNotFoundError:
        raise CollectorFileError("ca_file", f"{ca_file}: no such file") from None
    except OSError as exc:
        raise CollectorFileError("ca_file", f"{ca_file}: cannot read: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise CollectorFileError("ca_file", f"{ca_file}: no PEM certificate could be loaded from it "
                                 f"({exc.reason or exc}); a DER file converts with `openssl x509 -inform der "
                                 "-in FILE -out FILE.pem`") from None
    except OSError as exc:  # replaced between the two reads
        raise CollectorFileError("ca_file", f"{ca_file}: cannot read: {exc.strerror or exc}") from None
    return data


def shipping_identity(settings: "AgentSettings") -> str:
    """What the shipper is built from, by content, for a reload to compare: a token or CA bundle
    replaced at the same path (a rotation) was never used, as only the names were compared."""
    if not settings.collector:
        return ""
    h = hashlib.sha256()
    token = read_token(settings.token_file) if settings.token_file else ""
    for part in (settings.collector, str(settings.interval), token):
        h.update(part.encode() + b"\0")
    h.update(ca_bundle(settings.ca_file) if settings.ca_file else b"")
    return h.hexdigest()


def redact(text: str) -> str:
    """An HTTP error's text with any Authorization value masked (defence in depth: no path may
    echo the header, as httpx's "Illegal header value" did)."""
    return re.sub(r"(?i)\b(bearer|basic)\s+[^\s'\"]+", r"\1 ***", text)


def shown_url(url: str) -> str:
    """A URL as logs and output show it: what it holds before @ (a basic-auth proxy's user:pass, or
    a token as the user name) replaced by ***."""
    return re.sub(r"^(https?://)[^/@]*@", r"\1***@", url)


def redirect_problem(resp: httpx.Response, path: str) -> str | None:
    """For a 3xx answer, what to do: the Location and the `collector` to configure. Redirects are
    not followed (the bearer token would be sent to another address), and were reported as a
    refusal with an empty detail, retried for ever."""
    if not 300 <= resp.status_code < 400:
        return None
    location = resp.headers.get("Location")
    if not location:
        return f"the collector answered HTTP {resp.status_code} (a redirect) without a Location"
    target = str(resp.request.url.join(location))
    target = shown_url(target)
    base = target.split("#", 1)[0].split("?", 1)[0]
    base = base.removesuffix(path).rstrip("/")
    return (f"the collector redirected (HTTP {resp.status_code}) to {target}: set collector = \"{base}\" "
            "in [agent] of the configuration (redirects are not followed: the token would go to another "
            "address)")
