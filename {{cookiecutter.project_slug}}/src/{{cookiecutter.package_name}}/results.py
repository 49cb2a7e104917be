# celery-types does not describe the backend internals overridden below.
# mypy: disable-error-code="attr-defined,call-arg,misc,no-untyped-call,no-untyped-def"
"""The result backend: Celery's Redis backends, each result written in one round trip (R22).

Celery reads a task's stored result before every write, so that a late copy of a task
cannot overwrite its SUCCESS: a GET, then a SET and PUBLISH, for the STARTED write and
again for the final one, and another writer can still slip in between the two. Here one
Lua script checks and writes: half the round trips per write, and no gap. A write also
retries while a new master refuses writes for want of replicas (NOREPLICAS). Everything
else (URLs, Sentinel, retries, expiry, the size limit) is Celery's own; celeryconfig
maps the `redis` and `sentinel` URL schemes to these classes (`override_backends`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from redis.commands.core import Script

# KEYS[1] the result key; ARGV[1] the encoded result, ARGV[2] its lifetime in seconds
# (0: none). Returns 0 when a SUCCESS is kept, 1 when written (and published).
_WRITE_UNLESS_SUCCEEDED = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, meta = pcall(cjson.decode, stored)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class OneTripWrites:
    """Mixed into Celery's Redis backends: the read-then-write becomes one script call."""

    client: Any
    expires: int | None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # Celery's own steps without the GET: the script refuses to overwrite a SUCCESS.
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        try:
            self._set_with_state(self.get_key_for_task(task_id), self.encode(meta), state)
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        lifetime = self.expires if expires is None else expires
        self._write_script(keys=[key], args=[value, int(lifetime or 0)], client=self.client)

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        # A master with min-replicas-to-write refuses writes (NOREPLICAS) until its replicas
        # reattach, seconds after a failover: the write waits that out as it would a dropped
        # connection. Failing it instead fails the task's STARTED write, and Celery acks the
        # message of a task that never ran.
        return bool(super().exception_safe_to_retry(exc)) or str(exc).startswith("NOREPLICAS")

    @cached_property
    def _write_script(self) -> Script:
        # Sent by its SHA; loaded again by redis-py where a new master lacks it (NOSCRIPT).
        return Script(self.client, _WRITE_UNLESS_SUCCEEDED)


class OneTripRedisBackend(OneTripWrites, RedisBackend):
    pass


class OneTripSentinelBackend(OneTripWrites, SentinelBackend):
    pass
