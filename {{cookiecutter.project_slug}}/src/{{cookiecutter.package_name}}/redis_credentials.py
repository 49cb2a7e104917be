"""Sentinel credentials that a worker's stats never show.

A worker reports its broker connection, transport options included, to anyone who asks
(`celery inspect stats`, and any dashboard that shows it). Celery drops the URL's password from that
report, but a password in `sentinel_kwargs` went out in clear. redis-py takes the
credentials from a provider object instead; the object serialises as its user name only.
"""

from __future__ import annotations

from redis.credentials import CredentialProvider


class HiddenCredentials(CredentialProvider):
    """A user and password for redis-py, printed and serialised without the password."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        if self._username:
            return (self._username, self._password)
        return (self._password,)

    def __json__(self) -> str:
        """What kombu's JSON encoder sends in a stats reply."""
        return repr(self)

    def __repr__(self) -> str:
        return f"<credentials of {self._username or 'default'!r}, password hidden>"
