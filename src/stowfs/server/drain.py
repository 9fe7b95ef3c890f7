"""ASGI wrapper for a hypercorn (trio worker) deadlock on unread request bodies."""

from __future__ import annotations

import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class DrainUnreadBody:
    """Keep receiving while the last response message is sent, until `http.disconnect`.

    hypercorn's trio worker queues at most `max_app_queue_size` body chunks for the
    app, and sending the end of a response queues `http.disconnect` too. When a
    route answers without reading a large body (an early 403, 412 or 413), that
    put waits forever: the client hangs instead of getting its answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        disconnected = False

        async def watched_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def drain() -> None:
            while not disconnected:
                await watched_receive()

        async with trio.open_nursery() as nursery:

            async def send_and_drain(message: Message) -> None:
                ends = message["type"] == "http.response.body" and not message.get("more_body")
                if ends and not disconnected:
                    nursery.start_soon(drain)
                await send(message)

            await self.app(scope, watched_receive, send_and_drain)
            if disconnected:  # the app got it (Starlette listens during file responses)
                nursery.cancel_scope.cancel()
