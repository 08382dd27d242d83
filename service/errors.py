"""The one domain error type, and the one place it becomes an HTTP response."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from service.hints import message_with_hint

if TYPE_CHECKING:  # the worker raises these errors too, and does not import the web framework
    from fastapi import FastAPI, Request


class TrainlabError(Exception):
    """A failure the caller can act on. `status_code` is what the API answers; everything else is a 500."""

    status_code = 400
    headers: ClassVar[dict[str, str] | None] = None  # sent with the answer

    def __init__(self, detail: str, *, loc: Sequence[str | int] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # For input errors: the path of the offending field, in FastAPI's own `loc` format.
        self.loc = list(loc) if loc is not None else None

    def body(self) -> dict:
        if self.loc is None:
            return {"detail": self.detail}
        # Same shape as FastAPI's validation errors, so clients parse one format for every 422.
        return {"detail": [{"loc": self.loc, "msg": self.detail, "type": type(self).__name__}]}


class NotFound(TrainlabError):
    status_code = 404


class Conflict(TrainlabError):
    status_code = 409


class InvalidInput(TrainlabError):
    status_code = 422


class PayloadTooLarge(TrainlabError):
    status_code = 413


class UnsupportedMediaType(TrainlabError):
    status_code = 415


class ServiceUnavailable(TrainlabError):
    """Something the service depends on (its database) cannot be reached for now: retry later."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class ErrorBody(BaseModel):
    detail: str


# Documented on every operation of the OpenAPI schema (422 is FastAPI's own, in the same shape as InvalidInput's).
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorBody, "description": "The body could not be parsed (not JSON, or not multipart)"},
    404: {"model": ErrorBody, "description": "No such experiment, sweep or checkpoint"},
    409: {"model": ErrorBody, "description": "Not possible in the resource's current state (e.g. no checkpoint yet)"},
    413: {"model": ErrorBody, "description": "The body or the image is over this server's limits"},
    415: {"model": ErrorBody, "description": "The upload is not a PNG, JPEG or WebP image"},
    503: {"model": ErrorBody, "description": "The database cannot be reached for now: retry (see Retry-After)"},
}


def install_error_handler(app: FastAPI) -> None:
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(TrainlabError)
    async def _handle(_: Request, exc: TrainlabError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=_writable(exc.body()), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, but able to echo whatever the request held (see `_writable`), and saying what a
        # field was likely meant to be.
        errors = _with_hints(exc.errors(), getattr(request.scope.get("route"), "body_field", None))
        return JSONResponse(status_code=422, content={"detail": _writable(jsonable_encoder(errors))})


def _with_hints(errors: Sequence[dict], body_field: object) -> list[dict]:
    """Errors in the body's model get a hint after pydantic's message (service/hints.py): `epoch` → "did you mean
    'epochs'?", `lr` → "'lr' is set as optimizer.lr", `"loss": "mse"` → 'write it as {"kind": "mse"}'."""
    root = getattr(getattr(body_field, "field_info", None), "annotation", None)
    if not (isinstance(root, type) and issubclass(root, BaseModel)):
        return list(errors)
    hinted = []
    for error in errors:
        if tuple(error["loc"][:1]) == ("body",):
            error = {**error, "msg": message_with_hint(root, error, error["loc"][1:])}
        hinted.append(error)
    return hinted


def _writable(value: object) -> object:
    """`value` with what JSON cannot carry made visible instead of failing the answer with a 500: Python's JSON
    parser reads NaN, Infinity and 1e999, and escaped lone surrogates ("\\ud800"), which strict JSON and UTF-8
    have no way to write back."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode() if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {_writable(key): _writable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_writable(item) for item in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
