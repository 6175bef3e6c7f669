"""A heartbeat request body inflated (gzip) and split into its lines as it streams in."""

import zlib
from collections.abc import Iterable

_GZIP = 16 + zlib.MAX_WBITS


class NotAscii(ValueError):
    """A byte of the body is outside US-ASCII."""


class TooManyLines(ValueError):
    """The body holds more lines than the limit (found while splitting, not after)."""


class LineSplitter:
    """Feed the body's chunks in order, then ``close()`` for its lines, without LF or CRLF.

    The same lines as decoding the whole body and splitting it on LF (a final LF ends the last
    line rather than starting an empty one; a CR before an LF, or at the very end, is dropped),
    but each line is decoded straight from the chunk it lies in: a 5 MB batch was copied three
    more times on its way to the list of lines (join, decode, split), ~15 us a heartbeat of the
    collector's CPU in fresh memory (micro-benchmark), and held twice more at the peak."""

    def __init__(self, limit: int | None = None) -> None:
        self.lines: list[str] = []
        self._tail: list[bytes] = []  # the pieces of a line that has not ended yet
        # At most this many lines: refused at the first one past it. 16 kB of gzip inflate to
        # 16 MiB of bare LFs, 16.7 million lines, which took 4 s of the event loop to split.
        self._limit = limit

    def feed(self, chunk: bytes) -> None:
        find, view, start = chunk.find, memoryview(chunk), 0
        if self._tail:
            end = find(b"\n")
            if end < 0:
                self._tail.append(chunk)
                return
            self._tail.append(chunk[:end])
            self._add(b"".join(self._tail))
            self._tail, start = [], end + 1
        while (end := find(b"\n", start)) >= 0:
            self._add(view[start:end])
            start = end + 1
        if start < len(chunk):
            self._tail.append(chunk[start:])

    def close(self) -> list[str]:
        if self._tail:
            self._add(b"".join(self._tail))
            self._tail = []
        return self.lines

    def _add(self, data: bytes | memoryview) -> None:
        if self._limit is not None and len(self.lines) >= self._limit:
            raise TooManyLines(f"more than {self._limit} lines")
        try:
            line = str(data, "ascii")
        except UnicodeDecodeError as exc:
            raise NotAscii(str(exc)) from exc
        self.lines.append(line[:-1] if line.endswith("\r") else line)


def split_lines(chunks: Iterable[bytes]) -> list[str]:
    """The lines of a body given as chunks (see LineSplitter)."""
    splitter = LineSplitter()
    for chunk in chunks:
        splitter.feed(chunk)
    return splitter.close()


class BadGzip(ValueError):
    """The body is not a complete gzip stream."""


class TooLarge(ValueError):
    """The inflated body is longer than the limit."""


class Gunzip:
    """Inflate a gzip body as it streams in, member after member (RFC 1952 §2.2: a gzip file is
    a series of members, which `zcat` and `gzip.decompress` read whole), at most ``limit`` bytes
    out in all and at most MAX_MEMBERS members. Anything after a member that is not another
    member is an error, not ignored."""

    # An agent sends one member; a few files joined by `cat` make a few. 16 MiB of empty
    # members (838,860, 20 bytes each) took 4.3 s of the event loop, ten times a plain body.
    MAX_MEMBERS = 64

    def __init__(self, limit: int) -> None:
        self._left = limit
        self._member: zlib._Decompress | None = None  # the member being read, None between them
        self._members = 0

    def feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            if self._member is None:
                if self._members == self.MAX_MEMBERS:
                    raise BadGzip(f"more than {self.MAX_MEMBERS} gzip members")
                self._member = zlib.decompressobj(_GZIP)
                self._members += 1
            try:
                data = self._member.decompress(chunk, self._left + 1)  # max_length 0 = unlimited
            except zlib.error as exc:
                raise BadGzip(str(exc)) from exc
            self._left -= len(data)
            if self._left < 0 or self._member.unconsumed_tail:
                raise TooLarge
            out.append(data)
            if not self._member.eof:
                break
            chunk, self._member = self._member.unused_data, None
        return b"".join(out)

    def close(self) -> None:
        if self._member is not None or not self._members:
            raise BadGzip("truncated")
