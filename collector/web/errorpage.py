"""What a browser gets instead of a JSON error under /ui: a page that says what to do next."""

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from collector.web.auth import LoginRequired
from collector.web.common import render

_HEADINGS = {400: "That request cannot be answered", 403: "Not allowed", 404: "Not found",
             405: "Not allowed", 409: "Cannot be done now", 422: "Some input is not valid",
             429: "Too many requests", 503: "Not available now"}


def wants_page(request: Request) -> bool:
    """A browser's navigation under /ui (it asks for text/html); scripts and API clients, which
    read the JSON `detail`, do not."""
    path = request.url.path
    return (path.startswith("/ui/") and not path.startswith("/ui/static/")
            and "text/html" in request.headers.get("accept", ""))


def error_page(
    request: Request, status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    hint = None
    if isinstance(detail, list) and all(isinstance(e, dict) for e in detail):  # a validation error's
        text = "; ".join(f"{'.'.join(map(str, list(e.get('loc') or ())[1:]))}: {e.get('msg')}"
                         for e in detail)
    else:
        text = str(detail)
    if "CSRF" in text:
        hint = "The form was opened in an earlier session: reload the page, then send the form again."
    elif status == 403:
        hint = "You are signed in for another provider, or your role does not allow this."
    elif status == 429:
        hint = "Wait a little, then try again."
    resp = render(request, "error.html", None, status=status, heading=_HEADINGS.get(status, "Error"),
                  detail=text, hint=hint)
    resp.status_code = status
    if headers:
        resp.headers.update(headers)
    return resp


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if wants_page(request):
        return error_page(request, exc.status_code, exc.detail, exc.headers)
    return await http_exception_handler(request, exc)


def safe_next(target: str | None) -> str | None:
    """A page to return to after signing in: one of ours (no other host, no sign-in loop, no dot
    segment: `/ui/../v1/providers` left the pages, and `%2e` is a dot to a browser too)."""
    if (not target or not target.startswith("/ui/") or target.startswith("/ui/login") or "//" in target
            or "\\" in target or len(target) > 2000 or not target.isprintable()):
        return None
    path = target.split("?", 1)[0].split("#", 1)[0].lower().replace("%2e", ".")
    if any(seg in (".", "..") for seg in path.split("/")):
        return None
    return target


def sign_in_first(request: Request, exc: LoginRequired) -> Response:
    """To the sign-in form, saying why when a session ended, and back to the page after it; a
    form sent without a session is not replayed: the sign-in form says it was not recorded."""
    params = {}
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method == "GET" and safe_next(here):
        params["next"] = here
    if exc.ended:
        params["ended"] = "1"
    if request.method != "GET":
        params["lost"] = "1"
    return RedirectResponse("/ui/login" + (f"?{urlencode(params)}" if params else ""), status_code=303)
