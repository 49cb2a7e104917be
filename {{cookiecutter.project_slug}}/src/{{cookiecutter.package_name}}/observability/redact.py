"""Make values safe to log: secrets masked, size bounded (R40)."""

from __future__ import annotations

import re
from typing import Any

SENSITIVE_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|authori[sz]ation|cookie", re.I)
MAX_CHARS = 200


def redact(value: Any) -> str:
    """A short, secret-free rendering of a task argument or return value."""
    return _shorten(repr(_mask(value)))


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "***" if SENSITIVE_KEY.search(str(key)) else _mask(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return value


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_CHARS else f"{text[: MAX_CHARS - 3]}..."
