"""`stowfs mount` / `stowfs unmount` (issue: fs)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
