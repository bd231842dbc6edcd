"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`.

Every failure the server can meet ends here with a status a client can act on and a
message that says what to fix; no Python traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvscope.serve.protocol import OptionError

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error",
          404: "not_found_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "server_overloaded",
          500: "internal_error", 502: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(OptionError, _option_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)


async def _option_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OptionError)
    return error_response(400, str(exc), exc.param, exc.code)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """Pydantic's report, reduced to the first problem in plain words (status 400, as
    OpenAI answers invalid parameters)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(400, "invalid request body")
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return error_response(400, _json_error_message(first, exc.body), None, "json_invalid")
    elif first.get("type") == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}"
    else:
        why = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = f"{param}: {why}" if param else why
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return error_response(400, message, param, first.get("type"))


def _json_error_message(error: dict[str, Any], document: Any) -> str:
    """Where the JSON broke, as a line and column (the parser reports a character
    offset into the body)."""
    why = error.get("ctx", {}).get("error", "invalid JSON")
    position = error.get("loc", (None, None))[-1]
    if not isinstance(document, str) or not isinstance(position, int):
        return f"the request body is not valid JSON: {why}"
    line = document.count("\n", 0, position) + 1
    column = position - (document.rfind("\n", 0, position) + 1) + 1
    return f"the request body is not valid JSON: {why} at line {line}, column {column}"


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")
