"""The API's error bodies, the `responses` that declare them on a route, and every published model's base.

The read routes' 200 bodies are in collector/readmodels.py, the log key's in collector/logapi.py.
"""

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.routing import BaseRoute


def _open(schema: dict[str, Any]) -> None:
    # Published without additionalProperties: false: v1 may add members, and a client ignores
    # those it does not know; the tests' check still forbids any the model does not name.
    schema.pop("additionalProperties", None)


class Shape(BaseModel):
    """The base of every model the API publishes: unknown members forbidden when it checks."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_open)


class ErrorBody(Shape):
    detail: str


class InvalidItem(Shape):
    loc: list[str | int]
    msg: str
    type: str


class InvalidBody(Shape):
    """A 422: the request's own validation (where and why, collector/server.py `_invalid`) or a
    route's text for a value it refused. Declared as ErrorBody alone, a generated client failed
    on the list (an API review)."""

    detail: str | list[InvalidItem]


# The read routes' errors (collector/readmodels.py documented), 401 that of every API route.
READ_ERRORS = {
    401: "no API token, or an unknown one",
    403: "the token may not read this provider, or this route",
    404: "no such provider (or nothing of it to show)",
}


def errors(why: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route's error statuses, each a {"detail": text} body (for OpenAPI); a
    422's detail may also be the validation's list."""
    return {code: {"model": InvalidBody if code == 422 else ErrorBody, "description": text}
            for code, text in sorted(why.items())}


def json_errors(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The error bodies of a route that answers another type (the checkpoint's text/plain) declared
    as the JSON they are: FastAPI files a `model` under the route's own media type. Given to the
    route's decorator (FastAPI reads its models there once), and to the guards added after."""
    for code, response in responses.items():
        model = response.get("model")
        if model is not None and not str(code).startswith("2"):
            del response["model"]
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}  # ErrorBody: other routes list it
            response.setdefault("content", {})["application/json"] = {"schema": ref}
    return responses


# Every API route answers these (collector/readapi.py resolve_scope and roles).
AUTH_ERRORS = {401: READ_ERRORS[401], 403: "the token's role or provider may not use this route"}


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route of an app (``app.routes``), those of included routers too: FastAPI 0.16x
    keeps an included router as one entry (its `original_router`), where older ones copied its
    routes in, and the guards' statuses were declared, and checked by the tests, on the app's own
    ten routes only (an API review)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)
