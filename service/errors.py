"""The one domain error type, and the one place it becomes an HTTP response."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class TrainlabError(Exception):
    """A failure the caller can act on. `status_code` is what the API answers; everything else is a 500."""

    status_code = 400

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


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(TrainlabError)
    async def _handle(_: Request, exc: TrainlabError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.body())
