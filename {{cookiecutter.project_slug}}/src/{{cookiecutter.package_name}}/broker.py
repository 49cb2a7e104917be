# kombu ships no type information for its Redis transport.
# mypy: disable-error-code="misc,no-untyped-call"
"""The broker transport: kombu's Redis transports, whose channels survive a master failover.

kombu 5.7.0 can kill a worker on a Redis master failover. On the connection error the
consumer runs `Connection.collect()`, then `connection.close()`. collect() closes the
channel; with the master dead, kombu's `Channel.close` stops at its first step that talks
to Redis (reading the BRPOP the event loop left pending, deleting an auto-delete fanout
queue), before the channel is marked closed. collect() swallows that error and detaches
the transport (`transport.client = None`). close() then closes the same channel again,
and restoring its unacknowledged messages asks the detached transport for its URL in
`_connparams`: `AttributeError: 'NoneType' object has no attribute 'hostname'`, which no
caller handles, so the worker exits ("Unrecoverable error").
tests/integration/test_broker_failover.py reproduces it on real Sentinel.

Here `_connparams` on a detached transport raises a connection error instead, which every
caller already handles: the consumer reconnects. The messages that could not be restored
stay in the unacked index, where the visibility sweep finds them (R04) and the ledger's
reconcile re-dispatches their rows (R34). `register()` maps the URL schemes to these
classes; it must run before any connection.
"""

from __future__ import annotations

from typing import Any

from kombu import transport
from kombu.transport import redis
from redis.exceptions import ConnectionError as RedisConnectionError

# The URL schemes and the classes that serve them.
_TRANSPORTS = {
    "redis": "Transport",
    "rediss": "Transport",
    "sentinel": "SentinelTransport",
}


class _DetachedAware:
    """Mixed into kombu's Redis channels: no client from a transport that was detached."""

    connection: Any  # the channel's transport

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous)
        return params


class Channel(_DetachedAware, redis.Channel):
    pass


class SentinelChannel(_DetachedAware, redis.SentinelChannel):
    pass


class Transport(redis.Transport):
    Channel = Channel


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


def register() -> None:
    """Serve `redis://`, `rediss://` and `sentinel://` broker URLs with these transports.

    Through kombu's aliases, not the `broker_transport` setting: a connection that moves
    to the next URL of its list takes the transport from that URL's scheme.
    """
    for scheme, name in _TRANSPORTS.items():
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{name}"
        transport._transport_cache.pop(scheme, None)  # type: ignore[attr-defined]
