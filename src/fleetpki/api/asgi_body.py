"""Reading a request's body in an ASGI layer and handing it on to the application.

The layers that answer some requests before the framework (the OCSP and issuance fast
paths) read the body to decide; a request they pass on must reach the routes with the
same messages, which :func:`replay` gives back before reading on.
"""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["read_body", "replay"]


async def read_body(receive: Receive, limit: int) -> tuple[list[Message], bytes | None]:
    """The messages read and the whole body, or ``None`` for a body past ``limit`` bytes
    or at a disconnect (the routes answer those, from the messages handed on)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > limit:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
