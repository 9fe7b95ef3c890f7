"""ASGI wrapper for two hypercorn (trio worker) hangs.

1. Unread request bodies: see DrainUnreadBody.
2. Starlette's streaming and file responses, below ASGI spec 2.4, listen for
   `http.disconnect` while sending; under hypercorn's trio worker that listener
   keeps a `Connection: close` response open until the client gives up. Spec 2.4
   lets them skip it (hypercorn drops sends after a disconnect, as 2.4 allows).
"""

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
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.4"}}
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
