"""Exception handlers: every error answer is JSON with a reason and the request id.

An unexpected exception answers 500 with a generic reason; its traceback goes to the log
under the request id, never to the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from {{ cookiecutter.package_name }}.api.middleware import SECURITY_HEADERS
from {{ cookiecutter.package_name }}.api.responses import ErrorResponse
from {{ cookiecutter.package_name }}.api.schemas import ErrorBody
from {{ cookiecutter.package_name }}.observability.logging import request_id_var

logger = logging.getLogger("{{ cookiecutter.package_name }}.api.errors")

# Answers any route can give, before or beside its own (middleware.py and the handlers).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "A body that is not UTF-8 or not strict JSON (NaN, Infinity, a number"
        " beyond a float, a lone surrogate); or a Host not in API_TRUSTED_HOSTS (text)",
    },
    413: {"model": ErrorBody, "description": "Body larger than API_MAX_BODY_BYTES"},
    415: {"model": ErrorBody, "description": "A body that is not application/json"},
    500: {"model": ErrorBody, "description": "Unexpected error, logged under the request id"},
}
UNEXPECTED = "internal error; the service's log has it under this request id"


def add_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _invalid_request)
    api.add_exception_handler(Exception, _unexpected)


async def _http_error(request: Request, exc: Exception) -> ErrorResponse:
    assert isinstance(exc, HTTPException)
    return ErrorResponse.of(request.scope, exc.status_code, exc.detail, exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> ErrorResponse:
    """422 with FastAPI's error list, whatever the input was (NaN, bytes, odd objects)."""
    assert isinstance(exc, RequestValidationError)
    return ErrorResponse.of(request.scope, 422, plain_errors(exc.errors()))


async def _unexpected(request: Request, exc: Exception) -> ErrorResponse:
    """Starlette's outermost layer calls this one, outside the request middleware, so
    it adds that middleware's headers itself."""
    request_id = request.state.request_id
    token = request_id_var.set(request_id)
    try:
        logger.error("unhandled error", exc_info=exc)
    finally:
        request_id_var.reset(token)
    headers = {**SECURITY_HEADERS, "X-Request-ID": request_id}
    return ErrorResponse.of(request.scope, 500, UNEXPECTED, headers)


def plain_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as strict JSON: an input that is not becomes its repr."""
    plain = []
    for error in errors:
        item = jsonable_encoder(
            {key: value for key, value in error.items() if key != "input"},
            custom_encoder={BaseException: str},
        )
        if "input" in error:
            item["input"] = _plain(error["input"])
        plain.append(item)
    return plain


def _plain(value: Any) -> Any:
    try:
        encoded = jsonable_encoder(value)
        json.dumps(encoded, allow_nan=False)
    except (TypeError, ValueError):  # NaN, undecodable bytes, objects without a form
        return repr(value)
    return encoded
