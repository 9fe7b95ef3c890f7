"""`stowfs remote ...`: configured remotes (issue: client)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
