"""The FastAPI app: one worker, the three APIs, /health, /metrics, the page, and the rules every route shares.

Shared rules: a request body over ``max_body_bytes`` gets 413 before it is read
whole; a request the loop would refuse gets 422 naming the field (checked
before it is queued, so a bad request never takes a queue slot); a full queue
gets 429 with ``Retry-After``; a request that arrives while the server shuts down gets
503, as the requests waiting for the jobs it cancels.
"""

from __future__ import annotations

import html
import json
import re
import time
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from sdopt.errors import SdoptError
from sdopt.serve.auth import authorized, require_auth
from sdopt.serve.settings import ServeSettings
from sdopt.serve.errors import RequestError
from sdopt.serve.hosts import HostGuard
from sdopt.serve.image_links import ImageLinks
from sdopt.serve.request_ids import RequestId
from sdopt.serve.submission import default_size, with_model_defaults
from sdopt.serve.worker import QueueFull, ShuttingDown, Worker, served_folders

def _openai_path(path: str) -> bool:
    return path.startswith(("/v1/images", "/v1/models"))


def _route_path(scope: dict) -> str:
    """The path the routes match (/v1/models): under --root-path uvicorn's scope["path"], and request.url.path, begin
    with the prefix the proxy stripped (/sd/v1/models), and OpenAI's routes answered their errors in AUTOMATIC1111's shape."""
    return scope.get("path", "").removeprefix(scope.get("root_path", ""))


def _openai_route(request: Request) -> bool:
    return _openai_path(_route_path(request.scope))


def _error_body(path: str, status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """The error in the shape of the API ``path`` belongs to (a path, not a Request: the body limit answers before any)."""
    if _openai_path(path):
        # OpenAI's error shape, which its SDK turns into BadRequestError and friends (by the status), with OpenAI's own
        # types for a rate limit and for the server's failures: clients that read the type retry those alone.
        kind, code = (("requests", "rate_limit_exceeded") if status == 429 else ("server_error", None) if status >= 500
                      else ("invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "param": field, "code": code}}
    detail: Any = message if field is None else [{"loc": ["body", field], "msg": message, "type": "value_error"}]
    return {"detail": detail}


# FastAPI's 400 for a JSON body that json.loads fails on with something other than a JSONDecodeError (which it answers
# 422, as this server does all bad input): one nested past Python's recursion limit, or not UTF-8.
_BODY_UNPARSED = "There was an error parsing the body"
_UNPARSED_WHY = {RecursionError: "JSON decode error: nested too deeply", UnicodeDecodeError: "JSON decode error: not UTF-8 text"}


def _openai_param(error: dict[str, Any]) -> str | None:
    """The field a validation error is about, as OpenAI's ``param`` names it; None for the body as a whole.
    A body that is not JSON ends its loc in the character the parser stopped at, which is no field."""
    if error.get("type") == "json_invalid":
        return None
    return ".".join(str(p) for p in error["loc"][1:]) or None


def _sent_as_other_than_json(request: Request) -> str | None:
    """The Content-Type a body came with when it is not JSON's, else None. FastAPI then reads the body as no JSON at
    all, and says only "Input should be a valid dictionary": curl -d sends a JSON object so, as form data."""
    sent = request.headers.get("content-type")
    kind = (sent or "").partition(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return None
    return f"Content-Type: {sent}" if sent else "no Content-Type"


def create_app(worker: Worker, settings: ServeSettings, model_name: str, replica: str | None = None) -> FastAPI:
    """``replica``: this copy's name when several serve the same endpoint (Ray Serve, sdopt.cluster.serve):
    every response says which one answered (``X-Sdopt-Replica``), and so does /health."""
    from sdopt import __version__
    from sdopt.serve import api_a1111, api_a1111_lists, api_native, api_openai

    settings = with_model_defaults(settings, worker.pipeline)  # a request's steps and guidance where neither it nor sdopt serve says
    app = FastAPI(title="sdopt serve", version=__version__, description=f"Serving {model_name} with sdopt")
    app.state.worker, app.state.settings, app.state.model_name = worker, settings, model_name
    worker.shown_folders = api_a1111_lists.shown_folders(settings, worker.pipeline)  # no absolute path in a job's error
    worker.served_folders = served_folders(settings, worker.pipeline)  # whose fault a failure is
    app.state.started, app.state.replica = time.time(), replica
    app.state.image_links = ImageLinks(settings.image_dir)  # OpenAI's response_format=url
    app.state.clip_skip = 1  # AUTOMATIC1111's CLIP_stop_at_last_layers, as POST /sdapi/v1/options sets it (this process's)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if replica is not None:
        app.add_middleware(ReplicaHeader, replica=replica)
    elif settings.host_check is not None:  # (a Ray Serve replica is reached through Ray's proxy, by its own host settings)
        app.add_middleware(HostGuard, allowed=settings.host_check, bound=settings.host,
                           error_body=lambda scope, status, message: _error_body(_route_path(scope), status, message))
    # The last added is the outermost: the body limit's 413 carries the id too. A Ray Serve replica's answers get the
    # header from Ray's proxy, which gives the replica the id it sends (the client's, else its own) as the request's.
    app.add_middleware(RequestId, send_header=replica is None)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        return JSONResponse(_error_body(_route_path(request.scope), 429, str(exc)), status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(request: Request, exc: ShuttingDown):
        return JSONResponse(_error_body(_route_path(request.scope), 503, str(exc)), status_code=503)

    @app.exception_handler(SdoptError)  # and RequestError, a route's own refusal (its status, 422 unless it says)
    async def _sdopt_error(request: Request, exc: SdoptError):
        # sdopt's errors name files by the path they were given (right for a command line): here the server's
        # folders by their names (a vanished --embeddings-dir on refresh-embeddings quoted its absolute path), the
        # loop's refusals a route passes on as its own too (check_spec)
        status = exc.status if isinstance(exc, RequestError) else 422
        return JSONResponse(_error_body(_route_path(request.scope), status, worker.shown(str(exc)), exc.field), status_code=status)

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        """401, 404, 405, ... in the API's own error shape (OpenAI's SDK reads the message only from its shape)."""
        if exc.status_code == 400 and exc.detail == _BODY_UNPARSED:  # a JSON body as unreadable as one that is not JSON
            why = _UNPARSED_WHY.get(type(exc.__cause__), "JSON decode error")
            return await _validation(request, RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": why}]))
        body = _error_body(_route_path(request.scope), exc.status_code, str(exc.detail)) if _openai_route(request) else {"detail": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        sent_as = _sent_as_other_than_json(request)
        unread = [e for e in errors if sent_as and tuple(e["loc"]) == ("body",) and e["type"] in ("model_attributes_type", "dict_type")]
        for error in unread:  # a JSON object that came as form data (curl -d): the header is what to change
            error["msg"] = (f"the body came with {sent_as}, so it was not read as JSON: send it with "
                            "Content-Type: application/json (curl: -H 'Content-Type: application/json')")
        if _openai_route(request):
            first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
            field = _openai_param(first)
            what = "" if unread else ": send a JSON object, such as {\"prompt\": \"a red circle\"}"
            message = f"{field}: {first['msg']}" if field else f"the request body: {first['msg']}{what}"
            return JSONResponse(_error_body(_route_path(request.scope), 422, message, field), status_code=422)
        return JSONResponse({"detail": errors}, status_code=422)

    # HEAD as well as GET: load balancers' and uptime monitors' probes often send HEAD, which answered 405.
    # 503 while the worker is down (stopped, or its watchdog gone): probes (systemd, Docker's HEALTHCHECK with curl -f,
    # Kubernetes, load balancers) read the status code, and a 200 saying "worker down" in its body passed them all.
    @app.api_route("/health", methods=["GET", "HEAD"], tags=["server"], responses={503: {"description": "the worker is down, or its last calls all failed on the server's side"}})
    def health(request: Request) -> JSONResponse:
        pipe = worker.pipeline
        manifest = getattr(pipe, "manifest", None)
        # A worker alive but failing every call (its last FAILING_CALLS on the server's side) is unhealthy as well: a
        # probe that restarts the server on 503 is what helps a lost device or a backend in a bad state.
        healthy = worker.alive and not worker.failing
        # The last failure's text only to a caller with the credentials: /health is open, and an exception's text may quote
        # paths outside the server's folders, or what a client sent, to anyone who reaches the port.
        why = (f", the last with {worker.last_failure}" if authorized(request.headers.get("authorization"), settings)
               else " (the reason: ask /health with the credentials, or read the server's log)")
        status = "ok" if healthy else ("worker down" if not worker.alive else
                                       f"failing: the last {worker.failing_calls} calls failed{why}")
        return JSONResponse({
            "status": status,
            "model": model_name,
            "backend": getattr(manifest, "backend", None),
            "precision": getattr(pipe, "precision", None),
            "device": getattr(pipe, "device", None),
            "default_size": default_size(pipe),
            "queue": worker.queue_depth,
            "running": len(worker.current),
            **({"replica": replica} if replica is not None else {}),
        }, status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["server"], dependencies=[Depends(require_auth)], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(worker.metrics.render(), media_type="text/plain; version=0.0.4")

    # The page is static HTML with no data in it (the API calls it makes carry the credentials), filled in once
    # with what the server was started with.
    page = resources.files("sdopt.serve").joinpath("page.html").read_text(encoding="utf-8")
    scheme = "both" if settings.api_key and settings.api_auth else "bearer" if settings.api_key else "basic" if settings.api_auth else ""
    label = {"both": "API key or user:password", "bearer": "API key", "basic": "user:password", "": ""}[scheme]
    values = {"MODEL": html.escape(model_name), "AUTH": scheme, "AUTH_LABEL": label, "STEPS": settings.steps,
              "MAX_STEPS": settings.max_steps, "SIDE": default_size(worker.pipeline)}
    # In one pass: replaced one after another, a --name holding "{{AUTH}}" had that filled in too
    page = re.sub(r"\{\{([A-Z_]+)\}\}", lambda found: str(values[found.group(1)]), page)

    @app.api_route("/", methods=["GET", "HEAD"], tags=["page"], response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.include_router(api_native.router, dependencies=[Depends(require_auth)])
    app.include_router(api_a1111.router, dependencies=[Depends(require_auth)])
    app.include_router(api_a1111_lists.router, dependencies=[Depends(require_auth)])
    app.include_router(api_openai.router, dependencies=[Depends(require_auth)])
    app.include_router(api_openai.files_router)  # signed links: their own credential, as OpenAI's image URLs
    return app


class ReplicaHeader:
    """X-Sdopt-Replica on every response: which of the replicas behind one endpoint answered."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (b"x-sdopt-replica", replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def marked_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, marked_send)


class BodyLimit:
    """413 for a body over the limit: by Content-Length at once, or while a chunked body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, send)
        seen, refused = 0, False

        async def limited_receive():
            # The 413 is sent here, where the limit is passed: FastAPI's body reader catches any exception from
            # receive as its own parse error (a 422 "JSON decode error", a 400 for a form), so raising one to the
            # code below would not reach it. The app is told the client left, and what it answers is dropped.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, scope, send):
        message = f"the request body is larger than the {self.max_bytes / 2**20:g} MiB this server accepts: send smaller images"
        body = json.dumps(_error_body(_route_path(scope), 413, message)).encode()  # OpenAI's shape on its routes
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
