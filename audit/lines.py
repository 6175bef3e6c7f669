"""A .jws file's lines verified in parallel chunks read from the file, reduced to what later checks need."""

import bisect
import multiprocessing
from array import array
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from audit.recompute import Decl, Tally, cells_of, tally_heartbeat
from billing.recompute import Cells, Hours
from protocol.errors import ProtocolError
from protocol.heartbeat import Heartbeat, check_key_window, verify_heartbeat
from protocol.keys import load_public_key_b64
from protocol.merkle import EMPTY_ROOT, MerkleAccumulator, leaf_hash, leaf_hasher
from protocol.timefmt import month_bounds, previous_month

Add = Callable[..., None]
CHUNK = 2_000
# A chunk also ends past this many bytes: lines under MAX_LINE were read 2,000 at a time whatever
# their size, and 500 junk lines of 4 MiB (a 2 MB archive) took 4.1 GB (an auditor's review).
CHUNK_BYTES = 32 * 1024 * 1024
# The findings of one rule listed in full; the rest are counted, in one finding: 10 million empty
# lines (a 14 kB archive) were 10 million findings, 4.5 GB and a line of output each (a review).
FINDINGS_PER_RULE = 1_000
# No line longer than a request can be a heartbeat (heartbeat-v1.md §4: 16 MiB a request): such a
# line is hashed for the Merkle root in pieces and reported, never held whole nor decoded. A
# 5 GB line of one repeated byte is a 5 MB archive, and decoding it took ~5x its size in memory.
MAX_LINE = 16 * 1024 * 1024
_BLOCK = 1024 * 1024


@dataclass
class Lines:
    """The verified lines of one file: light heartbeats by index, the Merkle roots, hour tallies.

    What is kept grows with the good lines only (signed by an enrolled key): a bad line leaves its
    leaf hash in the roots and at most a finding, so a hostile file of junk lines costs nothing."""

    count: int = 0
    good: dict[int, Heartbeat] = field(default_factory=dict)  # header fields only, no observations
    root: bytes = EMPTY_ROOT  # RFC 9162 root of all the lines
    split_root: bytes | None = None  # and of the first ``split`` lines, when the file has that many
    # of the lines, in order: at most FINDINGS_PER_RULE a rule, then one saying how many more
    findings: list[tuple[str, int | None, str, str]] = field(default_factory=list)
    copies: list[tuple[int, str]] = field(default_factory=list)  # (index, digest) of repeated good lines
    spans: "Spans" = field(default_factory=lambda: Spans())  # where the good lines and copies are
    # Observations of the good lines per instance and hour, before and from ``split`` (closed/ size).
    split: int | None = None
    head: Tally | None = None
    tail: Tally | None = None


class Spans:
    """[start, end) in the file of lines added in increasing order: 24 bytes a line (a dict of
    tuples took ~150, 8 MB more for a 57,600-line month)."""

    def __init__(self) -> None:
        self._lines, self._starts, self._ends = array("q"), array("q"), array("q")

    def add(self, i: int, span: tuple[int, int]) -> None:
        assert not self._lines or i > self._lines[-1], "lines are added in order"
        self._lines.append(i)
        self._starts.append(span[0])
        self._ends.append(span[1])

    def get(self, i: int) -> tuple[int, int]:
        k = bisect.bisect_left(self._lines, i)
        if k == len(self._lines) or self._lines[k] != i:
            raise KeyError(i)
        return self._starts[k], self._ends[k]


# Worker state, set once per process (fork or spawn) so that a job is four integers.
_KEYS: dict[str, Any] = {}
_AGENTS: dict[str, Any] = {}
_SETUP: dict[str, Any] = {}
_FILE: list[BinaryIO] = []


def _init(path: str, agents: dict[str, Any], window: tuple[int, int, bool],
          only: frozenset[str] | None) -> None:
    _AGENTS.clear()
    _AGENTS.update(agents)
    _KEYS.clear()
    _KEYS.update({kid: load_public_key_b64(a.public_key) for kid, a in agents.items()})
    _SETUP.update(path=path, window=window, only=only)
    for f in _FILE:
        f.close()
    _FILE[:] = [open(path, "rb")]  # noqa: SIM115 - kept open for every chunk of this process


Problems = list[tuple[str, str]]
# The light heartbeats' polls and observations: one shared empty list (never appended to).
_NONE: list[Any] = []
# (leaf hashes, per line: (index, its light heartbeat or None, problems, [start, end)), tallies)
Result = tuple[list[bytes], list[tuple[int, Heartbeat | None, Problems, tuple[int, int]]], Cells, Decl]
Job = tuple[int, int, int, int, tuple[tuple[int, int], ...]]  # start, offset, end, count, long lines


def _overlong(f: BinaryIO, offset: int, end: int) -> bytes:
    """The leaf hash of the line at [offset, end) (its LF, if any, not hashed), read in pieces."""
    f.seek(offset)
    h = leaf_hasher()
    left = end - offset
    while left > 0:
        piece = f.read(min(_BLOCK, left))
        left -= len(piece)
        h.update(piece[:-1] if left == 0 and piece.endswith(b"\n") else piece)
    return h.digest()


def _read_chunk(f: BinaryIO, offset: int, end: int, count: int, long: tuple[tuple[int, int], ...]
                ) -> tuple[list[bytes], dict[int, bytes], list[int]]:
    """The chunk's lines; an overlong one (its [start, end) in ``long``) is b"" with its leaf hash
    in the second value, by its place in the chunk; and where each line starts."""
    raws: list[bytes] = []
    hashed: dict[int, bytes] = {}
    starts: list[int] = []
    at = offset
    for lo, hi in (*long, (end, end)):
        if lo > at:
            f.seek(at)
            parts = f.read(lo - at).split(b"\n")
            if parts[-1] == b"":
                parts.pop()  # the piece ended with its LF (the file's last line may lack one)
            for part in parts:
                starts.append(at)
                at += len(part) + 1
            raws += parts
        if lo < end:
            hashed[len(raws)] = _overlong(f, lo, hi)
            raws.append(b"")
            starts.append(lo)
        at = hi
    return raws[:count], hashed, starts[:count]


def _verify_chunk(job: Job) -> Result:
    start, offset, end, count, long = job
    m0, m1, anchors = _SETUP["window"]
    only = _SETUP["only"]
    raws, hashed, starts = _read_chunk(_FILE[0], offset, end, count, long)
    hashes = [hashed.get(k) or leaf_hash(raw) for k, raw in enumerate(raws)]
    out: list[tuple[int, Heartbeat | None, Problems, tuple[int, int]]] = []
    hours: Hours = {}
    decl: Decl = {}
    kids: dict[str, str] = {}  # one string per kid, so a chunk's result pickles each kid once
    for i, raw in enumerate(raws, start):
        problems: Problems = []
        span = (starts[i - start], starts[i - start] + len(raw))
        if i - start in hashed:
            why = f"the line is longer than any heartbeat can be (more than {MAX_LINE} bytes, a request's"
            out.append((i, None, [("jws.format", why + " bound): not decoded")], span))
            continue
        try:
            # Non-ASCII bytes become U+FFFD, which JWS verification then rejects on its line.
            hb: Heartbeat | None = verify_heartbeat(raw.decode("ascii", "replace"), _KEYS)
        except ProtocolError as exc:
            hb, problems = None, [(exc.rule, exc.detail)]
        if hb is not None:
            a = _AGENTS[hb.kid]
            try:
                check_key_window(hb, a.enrolled_at, a.revoked_at)
            except ProtocolError as exc:
                problems.append((exc.rule, f"{exc.detail} (key {a.name})"))
            if not m0 <= hb.time < m1:  # anchors: the window is the month before (verify_lines)
                problems.append(("anchor.month", "an anchor must be from the month before the bundle's")
                                if anchors else ("leaf.month", "time is outside the bundle's month"))
            if only is not None and not problems:
                # Billing's input is counted here, in the worker: the parent never holds observations.
                tally_heartbeat(hb, hours, decl, only, 1)
            hb = Heartbeat("", kids.setdefault(hb.kid, hb.kid), hb.seq, hb.prev, hb.time, hb.interval,
                           _NONE, _NONE, hb.digest)
        out.append((i, hb, problems, span))
    return hashes, out, cells_of(hours), decl


def _scan(path: Path, split: int | None) -> tuple[list[Job], int]:
    """The chunks of the file's lines (at most CHUNK lines and about CHUNK_BYTES bytes each, one
    ending at the line ``split``) and the number of lines; a line longer than MAX_LINE is noted in
    its chunk, to be hashed in pieces; a last line without LF is one too. Read in blocks: a line
    is never held whole, and nothing is kept a line (10 million empty lines were 80 MB here)."""
    jobs: list[Job] = []
    long: list[tuple[int, int]] = []
    n = first = 0  # lines so far, and the first line of the chunk being made
    begin = start = 0  # where that chunk begins, and where the current line does

    def cut(at: int) -> None:
        nonlocal first, begin, long
        if n > first:
            jobs.append((first, begin, at, n - first, tuple(long)))
        first, begin, long = n, at, []

    pos = 0
    with path.open("rb") as f:  # streamed: a month's log can be hundreds of MB
        while block := f.read(_BLOCK):
            at = block.find(b"\n")
            while at >= 0:
                end = pos + at + 1
                if end - start > MAX_LINE + 1:
                    long.append((start, end))
                n, start = n + 1, end
                if n - first >= CHUNK or end - begin >= CHUNK_BYTES or n == split:
                    cut(end)
                at = block.find(b"\n", at + 1)
            pos += len(block)
    if pos > start:
        # A last line without its LF is a line all the same (§6: "one compact JWS a line"; many
        # writers end a file without one): it is counted, hashed and checked like the others.
        if pos - start > MAX_LINE:
            long.append((start, pos))
        n += 1
    cut(pos)
    return jobs, n


def verify_lines(add: Add, rel: str, path: Path | None, agents: dict[str, Any], month: str,
                 progress: Callable[[str, int, int], None] | None, workers: Callable[[int], int] | int,
                 anchors: bool = False, only: frozenset[str] | None = None,
                 split: int | None = None) -> Lines:
    """Strictly verify each line (signature, enrolment window, month); keep the good ones, light.

    ``only`` (the instances whose capacities billing reads; None: no billing) makes the workers
    tally the good lines' observations, before and from the line index ``split``. A last line
    without LF is reported at once; the lines' own findings are returned, in line order.
    """
    res = Lines(split=split, split_root=EMPTY_ROOT if split == 0 else None)
    m0, m1 = month_bounds(month) if month else (0, 2**62)
    if only is not None:
        res.head, res.tail = Tally(m0), Tally(m0)
    if path is None:
        return res
    jobs, n = _scan(path, split)
    res.count = n
    at = split
    tree = MerkleAccumulator()
    listed: Counter[str] = Counter()  # findings of each rule so far

    def finding(line: int, rule: str, msg: str) -> None:
        listed[rule] += 1
        if listed[rule] <= FINDINGS_PER_RULE:
            res.findings.append((rel, line, rule, msg))

    seen: dict[str, int] = {}
    anchor_seen: dict[str, tuple[int, set[str]]] = {}  # kid -> (its anchor seq, the digests given)
    kids: dict[str, str] = {}
    last: dict[str, str] = {}  # each key's last digest so far
    done = 0

    def consume(result: Result) -> None:
        nonlocal done
        hashes, results, cells, decl = result
        for h in hashes:
            tree.append(h)
            if tree.size == at:
                res.split_root = tree.root()
        if res.head is not None and results:
            tally = res.head if at is None or results[0][0] < at else res.tail
            assert tally is not None
            tally.merge(cells, decl)
        for i, hb, problems, span in results:
            for rule, msg in problems:
                finding(i + 1, rule, msg)
            if hb is None or problems:
                continue
            if anchors:
                # A key's last heartbeat of the month before, or every copy of it when its seq
                # was forked there (collector/evidence.py anchor_rows): rule 4 then checks no link.
                first = anchor_seen.get(hb.kid)
                if first is not None and (first[0] != hb.seq or hb.digest in first[1]):
                    finding(i + 1, "anchor.duplicate", f"second anchor for key {hb.kid}"
                            + (f" (seq {hb.seq}, the first's is {first[0]})" if first[0] != hb.seq else ""))
                    continue
                anchor_seen.setdefault(hb.kid, (hb.seq, set()))[1].add(hb.digest)
            elif hb.digest in seen:
                finding(i + 1, "leaf.duplicate", f"the same JWS already on line {seen[hb.digest] + 1}")
                res.copies.append((i, hb.digest))  # tallied like the first copy: taken back alike
                res.spans.add(i, span)
                continue
            else:
                seen[hb.digest] = i
            kid = kids.setdefault(hb.kid, hb.kid)  # one string per kid across chunks too
            # A chain's prev is its predecessor's digest: share that string (a third of the memory).
            before = last.get(kid)
            prev = before if before == hb.prev else hb.prev
            res.good[i] = hb if kid is hb.kid and prev is hb.prev else Heartbeat(
                "", kid, hb.seq, prev, hb.time, hb.interval, _NONE, _NONE, hb.digest)
            res.spans.add(i, span)
            last[kid] = hb.digest
        done += len(results)
        if progress is not None:
            progress(rel, done, n)

    count = workers(n) if callable(workers) else workers
    # §6: an anchor is a key's last accepted heartbeat "of the month before"; an older one would
    # decide a boundary break that the month before's own evidence does not show.
    window = (month_bounds(previous_month(month))[0], m0) if anchors and month else (m0, m1)
    setup = (str(path), agents, (*window, anchors), only)
    if count <= 1 or len(jobs) <= 1:
        _init(*setup)
        try:
            for job in jobs:
                consume(_verify_chunk(job))
        finally:
            _FILE.pop().close()
    else:
        # concurrent.futures, not multiprocessing.Pool: a worker killed (the OOM killer, a hostile
        # bundle) breaks the executor and raises, where Pool.imap waited for its chunk for ever
        with ProcessPoolExecutor(count, multiprocessing.get_context(), _init, setup) as pool:
            try:
                for result in pool.map(_verify_chunk, jobs):
                    consume(result)
            except BrokenProcessPool as exc:
                raise VerifyAborted(f"a signature worker of {rel} died (killed, or out of memory): "
                                    "the lines were not all verified") from exc
    res.root = tree.root()
    for rule, count in listed.items():
        if count > FINDINGS_PER_RULE:
            res.findings.append((rel, None, rule, f"{count - FINDINGS_PER_RULE:,} more lines fail {rule}; "
                                 f"the first {FINDINGS_PER_RULE:,} are listed"))
    return res


class VerifyAborted(Exception):
    """The lines could not all be verified; the bundle fails by name (verify.internal)."""


def read_line(path: Path, lines: Lines, i: int) -> str:
    """Good line i (0-based) of the file again (or a copy of one), without its LF."""
    start, end = lines.spans.get(i)
    with path.open("rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    return raw.decode("ascii", "replace")
