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
reconcile re-dispatches their rows (R34).

A second failover fault silenced workers without any error: the event loop blocked for
good inside the read of its pub/sub connection (broadcasts: ping, revoke, shutdown).
With `retry_on_timeout` (celeryconfig) redis-py gives every connection one retry, and
`PubSub.parse_response()` uses it to reconnect inside the read that found the master
gone. redis-py resubscribes only through a callback it registers when the pub/sub object
fetches its own connection; kombu assigns that connection itself, so the new connection
is subscribed to nothing, and redis-py 8 reads it with no timeout (a blocking pub/sub read
ignores `socket_timeout`). Nothing ever arrives, not even the watchdog's ping, and the
watchdog exits the worker (redis-py issue #714 describes that reconnect inside a pub/sub
read, which then waits forever when no timeout applies). Here the pub/sub connection does
not retry: the error reaches kombu and the consumer reconnects and resubscribes, as it
does with kombu's default transport options. tests/integration/test_broker_failover.py
reproduces both faults.

A third fault left a connection on a replica. Sentinels do not switch at once: for a few
seconds after a failover one can still name the old master, which Sentinel has just
demoted (closing its clients). A connection made then reaches a replica, and redis-py
checks nothing there. Writes fail (READONLY) and reconnect, but a broadcast (PUBLISH, which
a replica accepts) reaches only that replica's subscribers, and a reply read (BRPOP) waits
on a list no worker fills: a ping, a revoke or a shutdown reaches no worker. As Redis's
Sentinel client guidelines ask, a Sentinel connection here checks the role of the server
it reached (HELLO tells it, and every component's user may send HELLO: ROLE is an admin
command) and fails on a replica, so the next attempt asks the sentinels again.
The same replica was reached without asking any sentinel: redis-py 8 reconnects a dropped
connection when the next command is sent, and does it to the address the connection had
(redis/redis-py#3874). Its retry after a failover error, and the next command on a
connection held outside the pool (as kombu holds its BRPOP connection), went back to the
demoted master. Here that reconnect goes through the sentinels and the role check, like a
first connect.
tests/integration/test_broker_failover.py reproduces both.

`register()` maps the URL schemes to these classes; it must run before any connection.
"""

from __future__ import annotations

from typing import Any

from kombu import transport
from kombu.transport import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import SentinelManagedConnection

# The URL schemes and the classes that serve them.
_TRANSPORTS = {
    "redis": "Transport",
    "rediss": "Transport",
    "sentinel": "SentinelTransport",
}


class _DetachedAware:
    """Mixed into kombu's Redis channels: no client from a transport that was detached."""

    connection: Any  # the channel's transport
    connection_errors: tuple[type[BaseException], ...]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        # Detached (client None), or closed already (no transport left): the same error.
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous)
        return params

    # Cleanup of a channel whose transport was detached, by celery's consumer steps after
    # a failover: Gossip cancels its consumer and closes its channel through
    # `ignore_errors(consumer.connection, ...)`, but the consumer has already dropped that
    # connection (None), so a connection error raised there turns into "Error on
    # restarting Gossip: AttributeError('NoneType' object has no attribute
    # 'connection_errors')" and the channel is left half closed, its sockets open. The
    # subscription and the auto-delete fanout binding belong to a broker connection that
    # is gone: one that cannot be undone now is skipped, and closing goes on. A stale
    # binding of a fanout exchange routes nothing (fanout messages are published to the
    # pub/sub topic, not to bound queues).

    def _unsubscribe_from(self, queue: str) -> None:
        try:
            super()._unsubscribe_from(queue)
        except self.connection_errors:
            if self.connection.client is not None:
                raise

    def queue_delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        try:
            super().queue_delete(queue, *args, **kwargs)
        except self.connection_errors:
            if self.connection.client is not None:
                raise


class _PubSubWithoutRetry:
    """Mixed into kombu's Redis channels: the pub/sub connection's errors reach kombu."""

    subclient: Any  # redis-py PubSub: fanout queues (broadcasts, events)

    def _subscribe(self) -> None:
        # kombu subscribes every connection its pub/sub object gets (the first, and each
        # after a reconnect of the consumer), so this covers all of them. No retry and no
        # error that counts for one: redis-py neither retries nor reconnects, it raises.
        connection = self.subclient.connection
        if connection is not None:
            connection.retry = Retry(NoBackoff(), 0, supported_errors=())
        super()._subscribe()


class _MasterChecked:
    """Mixed into redis-py's Sentinel-managed connections: a replica is not the master, and
    a dropped connection reconnects through the sentinels (redis/redis-py#3874)."""

    connection_pool: Any  # redis-py's SentinelConnectionPool

    def connect_to(self, address: tuple[str, int]) -> None:
        super().connect_to(address)
        if self.connection_pool.is_master and server_role(self) != "master":
            self.disconnect()  # type: ignore[attr-defined]
            host, port = address
            raise RedisConnectionError(f"{host}:{port} is a replica: asking the sentinels again")

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:  # type: ignore[attr-defined]
            self.connect()  # type: ignore[attr-defined]  # the sentinels, then connect_to
        super().send_packed_command(command, check_health)


def server_role(connection: Any) -> str:
    """The role ("master", "replica") of the server a connection reached, from HELLO."""
    connection.send_command("HELLO")
    reply = connection.read_response()
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    decoded = {_text(key): _text(value) for key, value in fields.items()}
    return decoded.get("role", "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MasterCheckedConnection(_MasterChecked, SentinelManagedConnection):
    pass


class MasterCheckedSSLConnection(_MasterChecked, redis.SentinelManagedSSLConnection):
    pass


class Channel(_DetachedAware, _PubSubWithoutRetry, redis.Channel):
    pass


class SentinelChannel(_DetachedAware, _PubSubWithoutRetry, redis.SentinelChannel):
    connection_class = MasterCheckedConnection
    connection_class_ssl = MasterCheckedSSLConnection


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
