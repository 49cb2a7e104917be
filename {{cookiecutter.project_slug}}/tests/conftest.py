"""Shared fixtures: every tier registers the `reliability` marker (see pyproject.toml)."""
