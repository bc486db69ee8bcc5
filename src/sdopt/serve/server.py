"""`sdopt serve`: load the artifact once, start its worker, run the app under uvicorn."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, Terminated, command_line, require
from sdopt.serve.settings import ServeSettings


def model_name(artifact: str | Path, settings: ServeSettings) -> str:
    from sdopt.os_text import readable

    # text, as JSON answers must be: under LC_ALL=C a non-ASCII --name or folder name was undecoded bytes (surrogates)
    # that every answer naming the model refused to encode (500: /sdapi/v1/sd-models, /v1/models, options)
    return readable(settings.name or Path(str(artifact).rstrip("/")).name or str(artifact))


def check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds (asyncio's create_server): a port in TIME_WAIT is free. Not on Windows, where asyncio does not
        # set it either: there SO_REUSEADDR binds a port another process listens on, and the busy port passed this check,
        # to fail after the load as a port "taken while the model loaded".
        if os.name == "posix" and sys.platform != "cygwin":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SdoptError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port, or stop what uses it") from None


def build(pipeline: Any, settings: ServeSettings, name: str, start_worker: bool = True, replica: str | None = None):
    """The app over an already loaded pipeline (tests, embedders and Ray Serve replicas call this). start_worker=False
    leaves the worker idle until ``app.state.worker.start()``: tests that fill the queue first."""
    from sdopt.serve.app import create_app
    from sdopt.serve.worker import Worker

    # AUTOMATIC1111 loads its embeddings folder at start and skips what does not fit (listed by /sdapi/v1/embeddings).
    skipped = pipeline.add_embeddings(settings.embeddings_dir, skip_unfit=True) if settings.embeddings_dir else {}
    for word, why in skipped.items():
        warnings.warn(f"embedding {word} skipped: {why}", UserWarning, stacklevel=2)
    worker = Worker(pipeline, max_queue=settings.max_queue, max_batch=settings.max_batch, job_timeout=settings.job_timeout)
    if start_worker:
        worker.start()
    app = create_app(worker, settings, name, replica=replica)
    app.state.embeddings_skipped = skipped
    return app


class _BindErrorSaidBySdopt:
    """A logging filter: uvicorn's record of an OSError before its server started (a failed bind) is dropped."""

    def __init__(self, server: Any):
        self.server = server

    def filter(self, record: Any) -> bool:
        return self.server.started or not isinstance(record.msg, OSError)


def http_server(app: Any, host: str, port: int, access_log: bool = False, root_path: str = "",
                on_started: Any = None) -> Any:
    """The uvicorn server for ``app``. On SIGINT, SIGTERM or SIGHUP it stops the worker at once, besides taking no new
    connections: the queued and running jobs are cancelled, so the requests waiting for them are answered 503 (the
    server is shutting down) and the process exits, instead of uvicorn waiting for every one of them to run to its
    end or to --job-timeout (600 s by default) before it exits. ``access_log``: a line per request (uvicorn's: client,
    request line, status) on stdout, besides the warnings and errors on stderr; otherwise only those. ``root_path``: the
    prefix a reverse proxy serves the server under and strips (/sd): the links the server gives (OpenAI's
    response_format=url, /docs' schema) carry it. ``on_started(port)``: called once the port is open."""
    import logging
    import threading

    import uvicorn

    worker = app.state.worker

    class Server(uvicorn.Server):
        def run(self, *args: Any, **kwargs: Any) -> None:
            # Its requests' errors name the fields an HTTP client sent: the event loop's tasks copy the context it starts
            # in, where sdopt serve's command line named flags ("ask for --cache-interval 1" to a JSON body).
            with command_line(False):
                # SIGHUP (the terminal closed, or a supervisor's stop) killed the process at once, dropping the requests
                # in flight; uvicorn handles only SIGINT and SIGTERM. It now stops as SIGTERM does.
                # Windows has no SIGHUP (a closed console window is CTRL_CLOSE_EVENT, which uvicorn does not handle either).
                sighup = getattr(signal, "SIGHUP", None)
                ours = sighup is not None and threading.current_thread() is threading.main_thread()
                hangup = signal.signal(sighup, self.handle_exit) if ours else None
                # uvicorn logs a failed bind ("[Errno 98] error while attempting to bind ...") before it exits 3; serve()
                # says it then in its one line, which says what to do.
                unbound = logging.getLogger("uvicorn.error")
                quiet = _BindErrorSaidBySdopt(self)
                unbound.addFilter(quiet)
                try:
                    super().run(*args, **kwargs)
                finally:
                    unbound.removeFilter(quiet)
                    if hangup is not None:
                        signal.signal(sighup, hangup)

        async def startup(self, *args: Any, **kwargs: Any) -> None:
            await super().startup(*args, **kwargs)
            if self.started and on_started is not None:
                on_started(self.servers[0].sockets[0].getsockname()[1])  # --port 0: the one the system chose

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopped_by = sig  # serve() reads it: a SIGTERM is the stop asked for
            super().handle_exit(sig, frame)
            # In a thread: a signal handler interrupts the event loop's thread, which may hold a job's lock.
            threading.Thread(target=worker.stop, name="sdopt-serve-stop", daemon=True).start()

    # uvicorn colours its lines whenever stdout is a terminal: NO_COLOR (no-color.org, set and not empty) turns that off.
    # lifespan off: the app has no startup or shutdown handlers, and a second Ctrl-C (uvicorn's force exit) skipped the
    # lifespan's shutdown, leaving its task waiting when the loop closed: uvicorn logged its cancellation as a 40-line
    # traceback before "sdopt: interrupted".
    no_color = bool(os.environ.get("NO_COLOR"))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", root_path=root_path,  # configures uvicorn's loggers, to warning
                            use_colors=False if no_color else None, lifespan="off")
    if access_log:
        from sdopt.serve.request_ids import mark_access_lines

        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        mark_access_lines()  # each line ends with its request's X-Request-ID
    return Server(config)


def say_safety_checker(folder: Path) -> None:
    """Said once at start, by sdopt serve and its --ray deployment alike, of a checkpoint that ships a safety checker:
    sdopt never runs it, and a service's operator is who most needs to know its images are unfiltered (README)."""
    from sdopt.layouts import safety_checker_note

    if note := safety_checker_note(folder):
        print(f"note: {note}", file=sys.stderr)


def serve(artifact: str | Path, settings: ServeSettings, load_options: dict[str, Any] | None = None, access_log: bool = False,
          root_path: str = "") -> None:
    require("fastapi", "serve")
    require("uvicorn", "serve")
    import sdopt

    if settings.exposed and not settings.needs_auth:
        warnings.warn(
            f"serving on {settings.host} WITHOUT credentials: anyone who reaches this port can use it. "
            "Pass --api-key KEY (or set SDOPT_API_KEY) or --api-auth USER:PASS",
            UserWarning,
            stacklevel=2,
        )
    check_port_free(settings.host, settings.port)  # before the (slow) load
    if settings.image_dir is not None:
        # Its folder and links' key are made, or refused in one line, before the load too: an --image-dir this user cannot
        # write (a read-only mount, another user's folder) was said only once the model had loaded (minutes for SDXL).
        from sdopt.serve.image_links import ImageLinks

        ImageLinks(settings.image_dir)
    from sdopt.source import resolve

    folder = resolve(artifact)  # a path that does not exist: said alone, not after "loading ..."
    name = model_name(artifact, settings)
    try:
        # The line in the try: a SIGTERM sent once it is read (a service manager's stop) interrupted the print itself,
        # outside the try, and ended 130
        print(f"loading {artifact} ...", file=sys.stderr)
        pipeline = sdopt.load(folder, **(load_options or {}))
    except Terminated:
        # SIGTERM during the load is the same stop asked for as after it (systemd stopping a unit still starting): 0 too,
        # where it ended 130 and the service in a failed state
        print(f"stopped {name} (SIGTERM) while it loaded", file=sys.stderr)
        return
    say_safety_checker(folder)

    # An IPv6 address goes in brackets in a URL: http://::1:7860/ is none a browser or curl can open
    url_host = f"[{settings.host}]" if ":" in settings.host else settings.host

    def say_serving(port: int) -> None:  # once the port is open: said before, it was said of a port uvicorn then lost
        print(f"serving {name} ({pipeline.manifest.backend}, {pipeline.precision}) on http://{url_host}:{port}/ "
              f"(API docs at /docs; max batch {app.state.worker.max_batch}, queue {settings.max_queue})", file=sys.stderr)

    app = server = None
    try:
        # From the load's end until uvicorn handles SIGTERM itself (the app built: FastAPI's import, --embeddings-dir's
        # embeddings; uvicorn started), SIGTERM is sdopt's Terminated: that stop ended 130 too.
        app = build(pipeline, settings, name)
        server = http_server(app, settings.host, settings.port, access_log=access_log, root_path=root_path, on_started=say_serving)
        server.run()
    except SystemExit as exc:
        # uvicorn exits 3 when it cannot bind: the port was free before the load (check_port_free) and another process
        # took it meanwhile: one line and exit 2, as a port found busy before the load (uvicorn's own line is filtered).
        # uvicorn 0.29-0.36 (pyproject allows >=0.29) exit 1 there, their server's only sys.exit.
        if server is None or server.started or exc.code not in (1, 3):
            raise
        raise SdoptError(f"cannot listen on {settings.host}:{settings.port}: another process took the port while the model "
                         "loaded; pass another --port, or stop what uses it") from None
    except KeyboardInterrupt as exc:
        # uvicorn raises the signal that stopped it again once it has stopped, and sdopt's command line turns SIGTERM
        # into KeyboardInterrupt ("interrupted", status 130). SIGTERM is how systemd, docker and Kubernetes stop a
        # service, which then ended in a failed state: the stop asked for ends 0. Ctrl-C (SIGINT) keeps 130.
        if not isinstance(exc, Terminated) and getattr(server, "stopped_by", None) != signal.SIGTERM:
            raise
        print(f"stopped {name} (SIGTERM)", file=sys.stderr)
    else:
        if getattr(server, "stopped_by", None) == getattr(signal, "SIGHUP", "none on Windows"):  # uvicorn raises only the signals it handles again
            print(f"stopped {name} (SIGHUP)", file=sys.stderr)
    finally:
        if app is not None:
            app.state.worker.stop()
        pipeline.close()
