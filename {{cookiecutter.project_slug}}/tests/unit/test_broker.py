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


class _Replies:
    """A connection that answers HELLO with `reply` (the rest of redis-py is not needed)."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.sent: list[tuple[str, ...]] = []

    def send_command(self, *args: str) -> None:
        self.sent.append(args)

    def read_response(self) -> Any:
        return self.reply


@pytest.mark.reliability("R31")
@pytest.mark.parametrize(
    ("reply", "role"),
    [
        ([b"server", b"redis", b"proto", 2, b"role", b"replica"], "replica"),
        ({"server": "redis", "proto": 3, "role": "master"}, "master"),
    ],
    ids=["resp2-bytes", "resp3-text"],
)
def test_the_role_check_reads_hello_in_either_protocol(reply: Any, role: str) -> None:
    connection = _Replies(reply)
    assert broker.server_role(connection) == role
    assert connection.sent == [("HELLO",)]
