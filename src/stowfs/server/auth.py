"""API keys: `X-API-Key` or `Authorization: Bearer`, stored as SHA-256, owned by a team."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass

from .config import PLANS, Plan
from .errors import APIError
from .timeutil import iso

KEY_PREFIX = "stk_"
_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Principal:
    team_id: str
    user_id: str
    plan: Plan
    key_hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(conn: sqlite3.Connection, team: str, plan: str, user: str | None = None) -> str:
    """Create the team if new (with `plan`), then a key for it; returns the key."""
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r} (choose from {', '.join(PLANS)})")
    now = iso(time.time())
    row = conn.execute("SELECT id FROM teams WHERE name = ?", (team,)).fetchone()
    if row is None:
        team_id = secrets.token_hex(6)
        conn.execute(
            "INSERT INTO teams (id, name, plan, created_at) VALUES (?, ?, ?, ?)",
            (team_id, team, plan, now),
        )
    else:
        team_id = row["id"]
        conn.execute("UPDATE teams SET plan = ? WHERE id = ?", (plan, team_id))
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api_keys (key_hash, team_id, user_id, created_at) VALUES (?, ?, ?, ?)",
        (hash_key(key), team_id, user or f"user_{secrets.token_hex(4)}", now),
    )
    return key


def revoke_key(conn: sqlite3.Connection, key: str) -> bool:
    """Delete a key; whether it was one."""
    return conn.execute("DELETE FROM api_keys WHERE key_hash = ?", (hash_key(key),)).rowcount > 0


def extract_key(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def unauthorized(message: str) -> APIError:
    return APIError(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": "Bearer"})


class KeyCache:
    """Key lookups cached briefly: a revoked key stops working within seconds."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def get(self, key_hash: str) -> tuple[bool, Principal | None]:
        hit = self._entries.get(key_hash)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key_hash: str, principal: Principal | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + _CACHE_SECONDS, principal)


def lookup(conn: sqlite3.Connection, key_hash: str) -> Principal | None:
    row = conn.execute(
        "SELECT k.team_id, k.user_id, t.plan FROM api_keys k JOIN teams t ON t.id = k.team_id"
        " WHERE k.key_hash = ?",
        (key_hash,),
    ).fetchone()
    if row is None:
        return None
    return Principal(row["team_id"], row["user_id"], PLANS[row["plan"]], key_hash)
