"""Strict JSON decoding for signed objects: duplicate names, NaN and Infinity are errors."""

import json
import re
from typing import Any

from protocol.errors import ProtocolError


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"duplicate member name {name!r}")
            seen.add(name)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
# A `\uD800`-`\uDFFF` escape may decode to a lone surrogate, which is no Unicode text (RFC 8259
# §8.2, I-JSON): it would fail later when stored or re-encoded, so it is refused here.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads_strict(data: bytes, rule: str) -> Any:
    """Decode UTF-8 JSON text, refusing duplicate member names and non-standard constants."""
    try:
        text = data.decode("utf-8")
        obj = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text):
            # Only then the exact check: valid pairs were joined by the decoder, lone ones fail.
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return obj
    except UnicodeDecodeError as exc:
        raise ProtocolError(rule, "not UTF-8") from exc
    except UnicodeEncodeError as exc:
        raise ProtocolError(rule, "a string holds a lone UTF-16 surrogate") from exc
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(rule, f"not strict JSON: {exc}") from exc
