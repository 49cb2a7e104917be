"""Logs, error reporting and task lifecycle signals."""
