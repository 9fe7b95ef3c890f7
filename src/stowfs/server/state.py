"""What every request handler needs: the DB, the blobs, the signer, the settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Query, Request

from .auth import KeyCache, Principal, extract_key, hash_key, lookup, unauthorized
from .blobs import BlobStore
from .config import URL_EXPIRATION_DEFAULT, URL_EXPIRATION_MAX, URL_EXPIRATION_MIN, ServerConfig
from .db import Database
from .errors import bad_request
from .files import remove_blobs
from .signing import Signer, load_secret
from .urls import Urls

T = TypeVar("T")


@dataclass
class ServerState:
    config: ServerConfig
    db: Database
    blobs: BlobStore
    signer: Signer
    keys: KeyCache = field(default_factory=KeyCache)

    @classmethod
    def open(cls, config: ServerConfig) -> ServerState:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            config=config,
            db=Database(config.data_dir / "meta.db"),
            blobs=BlobStore(config.data_dir / "blobs"),
            signer=Signer(load_secret(config.data_dir / "secret")),
        )

    async def write_then_remove(self, fn: Callable[[sqlite3.Connection], list[str]]) -> list[str]:
        """Run a deleting transaction, then remove the blobs it released."""
        file_ids = await self.db.write(fn)
        remove_blobs(self.blobs, file_ids)
        return file_ids


# Dependencies are coroutines: FastAPI runs a plain `def` one in a worker thread, a
# thread hand-off per request for a few attribute reads.
async def get_state(request: Request) -> ServerState:
    state = request.app.state.stowfs
    assert isinstance(state, ServerState)
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


async def get_principal(
    state: StateDep,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    key = extract_key(x_api_key, authorization)
    if key is None:
        raise unauthorized("missing API key: send X-API-Key or Authorization: Bearer")
    key_hash = hash_key(key)
    cached, principal = state.keys.get(key_hash)
    if not cached:
        principal = await state.db.read(lambda conn: lookup(conn, key_hash))
        state.keys.put(key_hash, principal)
    if principal is None:
        raise unauthorized("invalid API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_urls(request: Request, state: StateDep) -> Urls:
    base = state.config.public_url or str(request.base_url).rstrip("/")
    return Urls(f"{base}/v1", state.signer)


UrlsDep = Annotated[Urls, Depends(get_urls)]


def check_lifetime(value: int) -> int:
    if not URL_EXPIRATION_MIN <= value <= URL_EXPIRATION_MAX:
        raise bad_request(
            f"url_expiration must be {URL_EXPIRATION_MIN}..{URL_EXPIRATION_MAX} seconds",
            code="INVALID_URL_EXPIRATION",
        )
    return value


async def url_lifetime(url_expiration: int = Query(URL_EXPIRATION_DEFAULT)) -> int:
    return check_lifetime(url_expiration)


LifetimeDep = Annotated[int, Depends(url_lifetime)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
