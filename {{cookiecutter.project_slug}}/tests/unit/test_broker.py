"""The broker transport's guard on channels that lost their transport (broker.py, R31)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from {{ cookiecutter.package_name }} import broker


@pytest.mark.reliability("R31")
@pytest.mark.parametrize("channel_class", [broker.Channel, broker.SentinelChannel])
@pytest.mark.parametrize(
    "transport",
    [None, SimpleNamespace(client=None)],
    ids=["closed", "detached"],
)
def test_a_channel_without_a_live_transport_raises_a_connection_error(
    channel_class: Any, transport: object
) -> None:
    """kombu's own channel raises AttributeError here, which no caller handles."""
    channel = channel_class.__new__(channel_class)  # no broker: only the guard runs
    channel.connection = transport
    with pytest.raises(RedisConnectionError, match="broker connection was closed"):
        channel._connparams()
