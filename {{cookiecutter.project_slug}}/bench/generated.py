"""The project's settings as it was generated: the defaults in settings.py.

The bench does not read a local `.env` (it would point at someone's real Redis and
database); it starts private services, so only the generated answers matter: which
database, which Redis topology, which Redis databases hold the broker and the results.
"""

from __future__ import annotations

from typing import Any

from {{ cookiecutter.package_name }}.settings import Settings


def default_setting(name: str) -> Any:
    value = Settings.model_fields[name].default
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value
