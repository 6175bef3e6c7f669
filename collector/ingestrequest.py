"""The HTTP side of a heartbeat request (heartbeat-v1.md §4): content type, body limits, its lines."""

import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from collector.bodylines import BadGzip, Gunzip, LineSplitter, NotAscii, TooLarge, TooManyLines
from protocol.heartbeat import MAX_REQUEST_BYTES, MAX_REQUEST_LINES

log = logging.getLogger("collector.server")  # the ingest's lines keep the logger they always had
MAX_LINES, MAX_BYTES = MAX_REQUEST_LINES, MAX_REQUEST_BYTES  # heartbeat-v1.md §4
GZIP_SLACK = 64 * 1024  # a gzip stream's largest overhead over its content, with room for its header


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks; a client gone before its end is one log line and a 400 nobody reads, not
    uvicorn's traceback of an unhandled ClientDisconnect (anyone could fill the log with those)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        log.info("event=ingest_aborted peer=%s reason='the client went away before its body ended'",
                 request.client.host if request.client else "?")
        raise HTTPException(400, "the client went away before its body ended") from None


async def read_lines(request: Request) -> list[str]:
    """The uncompressed body's lines, refused past 16 MiB (compressed or not) without buffering
    more; split as they stream in (collector/bodylines.py). The checks keep their order of old:
    size, then gzip, then US-ASCII (a non-ASCII byte stops the splitting, not the reading)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise HTTPException(415, f"unsupported Content-Encoding {encoding!r}")
    # §4 bounds the body uncompressed; gzip may make it larger on the wire (stored blocks: 5 bytes a
    # 64 KiB block, and the header): a 16 MiB body sent so got a 413. What it inflates to is bounded
    # by Gunzip itself.
    wire = MAX_BYTES if encoding == "identity" else MAX_BYTES + GZIP_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > wire:
        raise HTTPException(413, f"request body larger than {wire} bytes")
    splitter: LineSplitter | None = LineSplitter(MAX_LINES)
    total = 0
    inflater = Gunzip(MAX_BYTES) if encoding == "gzip" else None
    async for chunk in _body(request):
        total += len(chunk)
        if total > wire:
            raise HTTPException(413, f"request body larger than {wire} bytes")
        data = chunk
        if inflater is not None:
            try:
                data = inflater.feed(chunk)
            except BadGzip as exc:
                raise HTTPException(400, f"body is not valid gzip: {exc}") from exc
            except TooLarge as exc:
                raise HTTPException(413, f"uncompressed body larger than {MAX_BYTES} bytes") from exc
        if splitter is not None:
            try:
                splitter.feed(data)
            except NotAscii:
                splitter = None
            except TooManyLines as exc:
                raise HTTPException(413, f"at most {MAX_LINES} heartbeats per request") from exc
    if inflater is not None:
        try:
            inflater.close()
        except BadGzip as exc:
            raise HTTPException(400, "body is a truncated gzip stream") from exc
    try:
        if splitter is not None:
            return splitter.close()
    except NotAscii:
        pass
    except TooManyLines as exc:
        raise HTTPException(413, f"at most {MAX_LINES} heartbeats per request") from exc
    raise HTTPException(400, "body must be US-ASCII compact JWS lines")


def log_ingest(request: Request, results: list[dict[str, Any]]) -> None:
    """One line a request (access logging is off: it would be one a batch anyway), and the reasons
    of rejected lines: the collector's log said nothing of what it refused, only the agent's did."""
    counts = Counter(r["status"] for r in results)
    peer = request.client.host if request.client else "-"
    log.info("event=ingest peer=%s lines=%d accepted=%d duplicate=%d rejected=%d", peer, len(results),
             counts["accepted"], counts["duplicate"], counts["rejected"])
    if counts["rejected"]:
        reasons = Counter(r["reason"][:200] for r in results if r["status"] == "rejected")
        log.warning("event=ingest_rejected peer=%s rejected=%d reasons=%r", peer, counts["rejected"],
                    dict(reasons.most_common(5)))


# §4 names us-ascii; utf-8 is its superset and what a generic client says of text. The body is
# checked to be US-ASCII either way: a charset only tells what the client believes it sent.
_CHARSETS = frozenset({"us-ascii", "ascii", "utf-8"})


def check_content_type(header: str | None) -> None:
    """text/plain, with no charset or an ASCII-compatible one; no header at all is taken as
    text/plain (curl --data-binary and older agents send none), as docs/collector.md says."""
    if header is None:
        return
    kind, *params = (part.strip().lower() for part in header.split(";"))
    if kind != "text/plain":
        raise HTTPException(415, "Content-Type must be text/plain; charset=us-ascii")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in _CHARSETS:
            raise HTTPException(415, f"charset {value.strip()!r}: the body is US-ASCII (heartbeat-v1.md §4)")
