"""The streamed line split gives exactly the lines of the whole-body split, and the streamed gzip
inflation the bytes of gzip.decompress (every member), however the body is chunked."""

import gzip
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.bodylines import BadGzip, Gunzip, LineSplitter, NotAscii, TooLarge, TooManyLines, split_lines


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


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
       st.lists(st.integers(min_value=0, max_value=20_000), max_size=8), st.integers(0, 9))
def test_gunzip_reads_every_member_of_a_gzip_body_however_chunked(
    parts: list[bytes], cuts: list[int], level: int
) -> None:
    # A series of members is one gzip file (RFC 1952 §2.2), as zcat and gzip.decompress read it.
    body = b"".join(gzip.compress(p, compresslevel=level) for p in parts)
    inflater = Gunzip(16 * 1024 * 1024)
    out = b"".join(inflater.feed(c) for c in chunked(body, cuts))
    inflater.close()
    assert out == gzip.decompress(body) == b"".join(parts)


def _gunzip(body: bytes, limit: int = 1 << 20) -> bytes:
    inflater = Gunzip(limit)
    out = inflater.feed(body)
    inflater.close()
    return out


def test_gunzip_refuses_what_is_not_whole_members_and_counts_the_limit_over_all() -> None:
    one, two = gzip.compress(b"a\n"), gzip.compress(b"b\n" * 600)
    assert _gunzip(one + two) == b"a\n" + b"b\n" * 600
    for bad in (b"", b"not gzip", one + b"trailing", one + b"\x00" * 8, one + two[:-1], one[:5]):
        with pytest.raises(BadGzip):
            _gunzip(bad)
    assert len(_gunzip(one + two, limit=1202)) == 1202
    with pytest.raises(TooLarge):  # each member within it, both together past it
        _gunzip(one + two, limit=1201)


def test_gunzip_reads_64_members_and_refuses_the_65th() -> None:
    """16 MiB of empty gzip members (838,860 of them) took 4.3 s of the event loop, against 0.4 s
    for any other 16 MiB body: each member is a new inflater. An agent sends one."""
    one = gzip.compress(b"a\n")
    assert _gunzip(one * Gunzip.MAX_MEMBERS) == b"a\n" * Gunzip.MAX_MEMBERS
    inflater = Gunzip(1 << 20)
    inflater.feed(one * Gunzip.MAX_MEMBERS)
    with pytest.raises(BadGzip, match="more than 64 gzip members"):
        inflater.feed(gzip.compress(b""))


def test_a_line_limit_stops_the_split_at_the_first_line_past_it() -> None:
    """16 kB of gzip inflate to 16 MiB of bare LFs: 16.7 million empty lines were all split (4 s
    of the event loop) before the request's line count was judged."""
    splitter = LineSplitter(limit=3)
    splitter.feed(b"a\nb\nc")
    splitter.feed(b"\n")  # the third line ends: still within the limit
    with pytest.raises(TooManyLines):
        splitter.feed(b"\n" * (16 * 1024 * 1024))
    assert splitter.lines == ["a", "b", "c"]  # nothing split past the limit
    exact = LineSplitter(limit=3)
    exact.feed(b"a\nb\nc\n")
    assert exact.close() == ["a", "b", "c"]
    last = LineSplitter(limit=3)
    last.feed(b"a\nb\nc\nd")
    with pytest.raises(TooManyLines):
        last.close()  # an unterminated fourth line counts too
