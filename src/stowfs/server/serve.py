"""Run the server: hypercorn's trio worker plus the sweeper, in one nursery."""

from __future__ import annotations

import logging
import socket

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from . import sweeper
from .app import create_app
from .config import ServerConfig
from .state import ServerState

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


async def serve(
    config: ServerConfig,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the base URL once connections are accepted."""
    state = ServerState.open(config)
    hconfig = Config()
    hconfig.bind = [f"fd://{sock.fileno()}"]
    hconfig.accesslog = None
    # Hypercorn's own stderr handler would print every line twice beside ours.
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.keep_alive_timeout = 75
    hconfig.h11_max_incomplete_size = 64 * 1024
    hconfig.graceful_timeout = 2
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hypercorn_serve, create_app(state), hconfig)
            nursery.start_soon(sweeper.run, state)
            task_status.started(base_url(sock))
    finally:
        state.db.close()
