"""stowfs's own exception tree. Everything the CLI reports is a StowfsError."""

from __future__ import annotations


class StowfsError(Exception):
    """Base of every error stowfs reports to a user."""


class ConfigError(StowfsError):
    """A bad configuration or command-line value."""
