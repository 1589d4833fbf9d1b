"""Errors as OpenAI sends them: status code and {"error": {"message", "type", "param", "code"}}.

Every failure the server reports goes through `APIError`, including what FastAPI would send as
422 (a body that does not validate: 400 here, naming the field, as OpenAI does) and malformed
JSON. Handlers are registered on the app by `install_error_handlers`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

ERROR_TYPES = {  # OpenAI's error types per status
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error response: HTTP status, message, and the field (`param`) it is about."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message,
                          "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: Optional[str] = None) -> APIError:
    """400: a request field has a bad value."""
    return APIError(400, message, param, "invalid_value" if param else None)


def _param(loc: tuple) -> Optional[str]:
    """A pydantic error location as OpenAI's `param`: ("body", "messages", 0, "role") ->
    "messages[0].role"; union members pydantic tried (e.g. "str", "list[int]") are dropped."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "list", "dict") \
                or part.startswith(("function-", "json-")):
            continue
        else:
            out += ("." if out else "") + part
    return out or None


# Fields taking one of several shapes: pydantic reports each alternative's failure; say what
# the field accepts instead.
UNION_FIELDS = {
    "prompt": "prompt must be a string, a list of token ids, or a non-empty list of strings "
              "or of token-id lists (not mixed)",
    "stop": "stop must be a string or a list of strings",
}


def validation_error(errors: list) -> APIError:
    """The first pydantic error as a 400 naming its field; unknown fields come first, all of
    them named in one message."""
    if not errors:
        return invalid("invalid request body")
    unknown = [_param(tuple(e.get("loc", ()))) for e in errors
               if e.get("type") == "extra_forbidden"]
    if unknown and all(unknown):
        names = ", ".join(f"'{name}'" for name in unknown)
        return invalid(f"unrecognized request argument{'s' if len(unknown) > 1 else ''} "
                       f"supplied: {names}", unknown[0])
    first = errors[0]
    param = _param(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return invalid(f"request body is not valid JSON: {first.get('msg')}")
    if first.get("type") == "missing" and param:
        return invalid(f"missing required field '{param}'", param)
    if first.get("type") == "extra_forbidden" and param:
        return invalid(f"unrecognized request argument supplied: '{param}'", param)
    if param in UNION_FIELDS and first.get("type") != "value_error":
        return invalid(UNION_FIELDS[param], param)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return invalid(f"{param}: {message}" if param else message, param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        logger.exception("internal error serving %s", request.url.path)
        # the text of an unexpected exception stays in the log: it may describe server state
        return APIError(500, "internal error (the server log has the details)").response()
