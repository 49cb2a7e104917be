"""What a call to Redis, as broker or result backend, raises when Redis cannot answer."""

from __future__ import annotations

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

# kombu's OperationalError once a publish's retry policy is exhausted, redis-py's errors
# from the result backend and direct clients, and socket errors from either.
BROKER_ERRORS = (OperationalError, RedisError, OSError)
