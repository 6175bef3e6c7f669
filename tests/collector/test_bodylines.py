"""The streamed line split gives exactly the lines of the whole-body split, however the body is chunked."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from collector.bodylines import NotAscii, split_lines


def reference(body: bytes) -> list[str]:
    """What the collector did before: decode the whole body, split on LF, drop CRs before them."""
    lines = body.decode("ascii").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@given(st.binary().map(lambda b: b.translate(bytes(range(256)).replace(b"\x00", b"\n")))
       | st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"xy.z", b"\xc3\xa9", b""])).map(b"".join),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_streamed_split_matches_the_whole_body_split(body: bytes, cuts: list[int]) -> None:
    try:
        want: list[str] | None = reference(body)
    except UnicodeDecodeError:
        want = None
    try:
        got: list[str] | None = split_lines(chunked(body, cuts))
    except NotAscii:
        got = None
    assert got == want


def test_edges() -> None:
    assert split_lines([]) == []
    assert split_lines([b"\n"]) == [""]
    assert split_lines([b"a\r", b"\n", b"b"]) == ["a", "b"]
    assert split_lines([b"a", b"b", b"c\r\n\r\n"]) == ["abc", ""]
    assert split_lines([b"a\r"]) == ["a"]
