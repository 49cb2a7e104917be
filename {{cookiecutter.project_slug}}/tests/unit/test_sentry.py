"""R38: Sentry starts only with a DSN, in every process kind that calls it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sentry_sdk

from {{ cookiecutter.package_name }}.observability.sentry import init_sentry
from {{ cookiecutter.package_name }}.settings import Settings


@pytest.fixture(autouse=True)
def _reset_sentry() -> Iterator[None]:
    yield
    sentry_sdk.init(dsn=None)


@pytest.mark.reliability("R38")
def test_no_dsn_means_no_client() -> None:
    assert init_sentry(Settings(_env_file=None, sentry_dsn=""), "api") is False
    assert not sentry_sdk.get_client().is_active()


@pytest.mark.reliability("R38")
def test_a_dsn_starts_the_client_with_the_celery_integration() -> None:
    settings = Settings(_env_file=None, sentry_dsn="http://key@127.0.0.1:9/1")
    assert init_sentry(settings, "worker") is True
    client = sentry_sdk.get_client()
    assert client.is_active()
    assert "celery" in client.integrations
