"""Exceptions tasks raise to steer retry behaviour."""

from __future__ import annotations


class RetryableError(Exception):
    """A transient failure (timeout, unavailable dependency): retried with backoff."""


class AttemptLimitExceeded(Exception):
    """The ledger counted more starts than LEDGER_MAX_ATTEMPTS: the task goes DEAD."""
