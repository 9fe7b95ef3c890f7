"""The ASGI application: every router, the error handlers, the rate limiter."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from . import (
    routes_download,
    routes_images,
    routes_meta,
    routes_presign,
    routes_search,
    routes_storage,
    routes_upload,
)
from .drain import DrainUnreadBody
from .errors import install_handlers
from .ratelimit import RateLimiter, RateLimitMiddleware
from .state import ServerState

ROUTERS = (
    routes_storage,
    routes_search,
    routes_presign,
    routes_images,
    routes_upload,
    routes_download,
    routes_meta,
)


def create_app(state: ServerState) -> ASGIApp:
    app = FastAPI(
        title="stowfs reference storage server",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    app.state.stowfs = state
    install_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router)
    if state.config.rate_limit is not None:
        return DrainUnreadBody(RateLimitMiddleware(app, RateLimiter(state.config.rate_limit)))
    return DrainUnreadBody(app)
