"""A request id on every response (``X-Request-ID``), in the access log line and in the errors a request's job logs.

An operator reading "generate failed" in the log, or a client reporting a 500, needs to say which request it was.
The id is the client's own ``X-Request-ID`` where it sent a usable one (a proxy's, nginx's ``$request_id``), else a
new one. It lives in a context variable for the request's life: the access log line is written in that context, and
a job reads it when it is made (jobs.Job.request_id), so the worker's thread can name it.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

HEADER = b"x-request-id"
_CURRENT: ContextVar[str | None] = ContextVar("sdopt_request_id", default=None)
# What a log line can carry as it came: no spaces, no control characters (a forged line break), not too long.
_USABLE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# An image link's signature (serve/image_links.py) in a logged request line: it is the link's only credential.
_SIGNATURE = re.compile(r"([?&]signature=)[^&\s\"]*")


def current() -> str | None:
    """The id of the request being answered in this context; None outside one (a job made by a test or the CLI)."""
    return _CURRENT.get()


class RequestId:
    """ASGI middleware: takes or makes the id, keeps it for the request, and sends it back (``send_header``; not behind
    Ray Serve's proxy, which sends its own: the answer carried two, of two values where the client's was unusable)."""

    def __init__(self, app, send_header: bool = True):
        self.app, self.send_header = app, send_header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope.get("headers") or []).get(HEADER, b"").decode("latin-1")
        request_id = sent if _USABLE.fullmatch(sent) else uuid.uuid4().hex
        token = _CURRENT.set(request_id)

        async def marked_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, marked_send if self.send_header else send)
        finally:
            _CURRENT.reset(token)


class AccessLineWithId(logging.Formatter):
    """uvicorn's access line with ``request_id=ID`` at its end, and an image link's signature left out (``signature=-``):
    whoever read the log could fetch every linked image of the last hour without the API key. The line is written while
    the response starts, in the request's context. uvicorn's formatter unpacks the record's arguments, so the id is added
    to its text instead."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = _SIGNATURE.sub(r"\1-", self.inner.format(record))
        request_id = current()
        return f"{line} request_id={request_id}" if request_id else line


def mark_access_lines(logger_name: str = "uvicorn.access") -> None:
    """Every handler of uvicorn's access logger writes the request id (once: a second call leaves them as they are)."""
    for handler in logging.getLogger(logger_name).handlers:
        if handler.formatter is not None and not isinstance(handler.formatter, AccessLineWithId):
            handler.setFormatter(AccessLineWithId(handler.formatter))
