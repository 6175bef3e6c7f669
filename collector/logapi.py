"""The log's read routes (heartbeat-v1.md §5): its key, checkpoints, inclusion and consistency proofs."""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy.engine import Connection, Engine

from collector import apidoc, db, keyrotation, readapi, tlog
from protocol.merkle import MerkleError
from protocol.timefmt import parse_month

router = APIRouter(prefix="/v1/log")


class RetiredKey(apidoc.Shape):
    key: str  # verifier key, name+keyid+base64
    retired_at: str
    # the hand-over signed note (protocol/keyhandover.py); null for a key replaced without one
    statement: str | None
    replaced: str | None = None  # `tr7-collector key replace`: why (the old key lost or untrusted)


class CollectorKey(apidoc.Shape):
    """GET /v1/log/key: the checkpoint key now, and every retired one, oldest first."""

    key: str
    retired: list[RetiredKey]


_ERRORS = {**apidoc.AUTH_ERRORS, 400: "the month is not YYYY-MM", 404: "no such provider"}


@router.get("/key", response_model=CollectorKey, responses=apidoc.errors(apidoc.AUTH_ERRORS))
def log_key(request: Request, scope: readapi.ScopeDep) -> dict[str, Any]:
    """The key that signs checkpoints now, and the retired ones with their hand-over statements:
    check those from the key you pinned (`tr7-audit handover`) rather than trust this answer."""
    with db.read_conn(request.app.state.engine) as c:
        return {"key": keyrotation.current_key(c), "retired": keyrotation.history(c)}


@router.get("/{provider}/{month}/checkpoint", response_class=PlainTextResponse,
            responses=apidoc.json_errors(apidoc.errors({
                **_ERRORS,
                503: "this host does not yet hold the collector's rotated checkpoint key (`key rotate` ran "
                     "on another host)"})))
def checkpoint(request: Request, provider: str, month: str, scope: readapi.ScopeDep) -> str:
    engine, settings = request.app.state.engine, request.app.state.settings
    _log_access(engine, scope, provider, month)
    return db.write_tx(engine, lambda c: tlog.checkpoint(c, settings, provider, month))


@router.get("/{provider}/{month}/inclusion",
            responses=apidoc.errors({**_ERRORS, 400: _ERRORS[400] + ", or the index is not "
                                        "below the size, or the size is beyond the log"}))
def inclusion(
    request: Request, provider: str, month: str, scope: readapi.ScopeDep,
    index: int = Query(ge=0), size: int = Query(ge=1),
) -> dict[str, Any]:
    return _proof(request, scope, provider, month, lambda c: {
        "index": index, "size": size, "hashes": tlog.inclusion(c, provider, month, index, size)})


@router.get("/{provider}/{month}/consistency",
            responses=apidoc.errors({**_ERRORS, 400: _ERRORS[400] + ", or from exceeds to, "
                                        "or to is beyond the log"}))
def consistency(
    request: Request,
    provider: str,
    month: str,
    scope: readapi.ScopeDep,
    from_: int = Query(ge=0, alias="from"),
    to: int = Query(ge=0),
) -> dict[str, Any]:
    return _proof(request, scope, provider, month, lambda c: {
        "from": from_, "to": to, "hashes": tlog.consistency(c, provider, month, from_, to)})


def _proof(request: Request, scope: readapi.Scope, provider: str, month: str,
           make: Callable[[Connection], dict[str, Any]]) -> dict[str, Any]:
    """A proof of the month's log the token may read; a size beyond the log is the client's 400."""
    engine = request.app.state.engine
    _log_access(engine, scope, provider, month)
    with db.read_conn(engine) as c:
        try:
            return make(c)
        except MerkleError as exc:
            raise HTTPException(400, str(exc)) from exc


def _log_access(engine: Engine, scope: readapi.Scope, provider: str, month: str) -> None:
    """The month is a month, the token may read the provider's logs, and the provider exists: a
    checkpoint of an unknown provider's empty log is not signed (nor stored) for a plain GET."""
    try:
        parse_month(month)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    with db.read_conn(engine) as c:
        readapi.known_provider(c, scope, provider)
