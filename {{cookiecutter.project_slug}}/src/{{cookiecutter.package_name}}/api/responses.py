"""The JSON body of every error answer: a reason and the request's id."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope


class ErrorResponse(JSONResponse):
    """`{"detail": ..., "request_id": ...}`, in ASCII: any text a client sent can be echoed."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")

    @classmethod
    def of(
        cls, scope: Scope, status_code: int, detail: Any, headers: Mapping[str, str] | None = None
    ) -> ErrorResponse:
        request_id = scope.get("state", {}).get("request_id")
        return cls({"detail": detail, "request_id": request_id}, status_code, headers)
