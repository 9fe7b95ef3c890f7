"""Dialect `storage` (seed 000): search, distinct values, the schema of indexed fields."""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from . import search
from .config import URL_EXPIRATION_DEFAULT
from .fields import schema_document
from .records import file_record
from .state import PrincipalDep, StateDep, UrlsDep, check_lifetime

router = APIRouter(prefix="/v1")

PAGE_SIZE_MAX = 100
PAGE_MAX = 1_000_000  # keeps OFFSET a small integer whatever the client sends


class SearchRequest(BaseModel):
    filters: dict[str, Any] | None = None
    sort_by: str = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    page: int = Field(default=1, ge=1, le=PAGE_MAX)
    page_size: int = Field(default=20, ge=1, le=PAGE_SIZE_MAX)
    url_expiration: int = URL_EXPIRATION_DEFAULT


@router.post("/files/storage/search")
async def search_files(
    body: SearchRequest, who: PrincipalDep, state: StateDep, urls: UrlsDep
) -> dict[str, Any]:
    lifetime = check_lifetime(body.url_expiration)
    found = await state.db.read(
        lambda c: search.find(
            c,
            who.team_id,
            body.filters or {},
            body.sort_by,
            body.sort_order == "desc",
            body.page,
            body.page_size,
        )
    )
    return {
        "files": [file_record(r, urls, lifetime) for r in found.rows],
        "total": found.total,
        "page": body.page,
        "page_size": body.page_size,
        "total_pages": math.ceil(found.total / body.page_size),
    }


@router.get("/files/storage/distinct/{field:path}")
async def distinct_values(field: str, who: PrincipalDep, state: StateDep) -> dict[str, Any]:
    values = await state.db.read(lambda c: search.distinct(c, who.team_id, field))
    return {"field": field, "values": values, "count": len(values)}


@router.get("/files/storage/schema/fields")
async def schema_fields(who: PrincipalDep) -> dict[str, Any]:
    return schema_document()
