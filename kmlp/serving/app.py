"""Serving over HTTP: TensorFlow Serving's REST API on a run's SavedModel, and a playground page.

    kmlp serve DIR [--host 127.0.0.1] [--port 8501]

    GET  /v1/models/kmlp                          status of the version served
    GET  /v1/models/kmlp[/versions/N]/metadata    its signatures, with their inputs and outputs
    POST /v1/models/kmlp[/versions/N]:predict     {"signature_name": ..., "instances" or "inputs": ...}
    GET  /                                        the playground page (files in kmlp/serving/playground/)

The REST API takes and answers what TensorFlow Serving's does (same paths, bodies, status codes and
``{"error": ...}``), so a client written against ``kmlp serve`` works unchanged against
``tensorflow_model_server --rest_api_port=8501 --model_name=kmlp --model_base_path=DIR/export``.
Predictions come from the SavedModel's own signatures, loaded with ``tf.saved_model.load``; which
signatures there are, and the names, dtypes and shapes of their inputs and outputs, are read from
the SavedModel, never assumed. The playground runs kmlp's Python API on the run's Keras model (the
functions the SavedModel is exported from), so it has every control of ``kmlp sample``.

Every request is bounded by :class:`Limits`; a bad one gets status 400 and ``{"error": "..."}`` (one
line, never a traceback), and the next request is answered as usual. Every error is answered in that
form, whoever finds it: a route, Starlette (a missing static file), the Host check or the connection.
A HEAD request gets what GET would, without the body; on the REST API's paths, as in TensorFlow
Serving, that is 400 (it answers GET and POST only). Connections are bounded too:
idle ones are closed after a timeout, and the longest-idle first when too many are open; a request
arriving too slowly gets 408 (docs/serving-limits.md lists them all). The web stack is Starlette on
uvicorn; model calls run on a small pool of threads, never on the event loop.

This module holds the routes, the application (:func:`build_app`, :func:`create_app`) and
``kmlp serve`` itself (:func:`serve`); the REST conventions, the served SavedModel, the playground's
API and the connections' bounds each have their own module (see :mod:`kmlp.serving`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from kmlp.errors import ConfigError
from kmlp.serving.connections import BoundedH11Protocol
from kmlp.serving.limits import Limits
from kmlp.serving.playground import PLAYGROUND_DIR, Playground
from kmlp.serving.rest import RequestError, dumps, error_response, parse_json, read_body
from kmlp.serving.served_model import MODEL_NAME, ServedModel, parse_version

DEFAULT_PORT = 8501  # TensorFlow Serving's REST port
log = logging.getLogger("kmlp.serving.app")
say = functools.partial(print, flush=True)  # status lines reach a pipe or a log file at once


# ---------------------------------------------------------------------------------------------
# The web application


# TensorFlow Serving's own patterns (http_rest_api_util.cc); their \d is RE2's, ASCII digits only
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
INTERNAL_ERROR = "internal error; the server's log has the details"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class Work:
    """Runs model calls on ``max_workers`` threads, with at most ``max_pending`` requests in flight."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pool = ThreadPoolExecutor(limits.max_workers, thread_name_prefix="kmlp-serve")
        self.pending = 0

    async def __call__(self, fn, *args):
        if self.pending >= self.limits.max_pending:
            raise RequestError(f"server busy: {self.pending} requests in progress; try again", 503)
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.pending -= 1


class HostCheck:
    """ASGI middleware: 400 for a request whose Host header does not name one of ``allowed``, in
    TensorFlow Serving's error form (a local server's guard against DNS rebinding)."""

    def __init__(self, app, allowed):
        self.app, self.allowed = app, [host.lower() for host in allowed]

    async def __call__(self, scope, receive, send) -> None:
        host = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
        name = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::[0-9]*)?", host)  # the name, without the port
        if scope["type"] != "http" or (name and name.group(1).lower() in self.allowed):
            await self.app(scope, receive, send)
            return
        headers, body = error_response(f"Host header {host!r} is not a name of this server "
                                       f"({', '.join(self.allowed)})")
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build_app(served: ServedModel, playground: Playground | None = None, limits: Limits = Limits(),
              allowed_hosts=None):
    """The ASGI application: TensorFlow Serving's REST API on ``served`` and, with a ``playground``,
    the page at ``/``. ``allowed_hosts`` (Host headers accepted) guards a local server against DNS
    rebinding; None accepts any."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    work = Work(limits)

    def json_response(obj, status: int = 200, headers=None) -> Response:
        return Response(obj if isinstance(obj, bytes) else dumps(obj), status_code=status,
                        headers=headers, media_type="application/json")

    def answering(handler):
        """Wrap an endpoint: a RequestError becomes its JSON error; anything else a 500 with a
        one-line body (the traceback goes to the server's log, never to the client)."""
        async def endpoint(request):
            try:
                return await handler(request)
            except RequestError as e:
                return json_response({"error": str(e)}, e.status)
            except ClientDisconnect:  # gone, or timed out by its connection: nobody listens
                return json_response({"error": "client disconnected"}, 499)
            except Exception:
                log.exception("error answering %s %s", request.method, request.url.path)
                return json_response({"error": INTERNAL_ERROR}, 500)
        return endpoint

    async def starlette_error(request, exc: HTTPException) -> Response:
        """Starlette's own refusals (a missing static file, a method a route does not take)."""
        path = request.url.path
        message = f"Not found: {path}" if exc.status_code == 404 else f"{exc.detail}: {request.method} {path}"
        return json_response({"error": message}, exc.status_code, exc.headers)

    async def uncaught_error(request, exc: Exception) -> Response:
        """Anything raised outside the wrapped endpoints: Starlette raises it again after this
        answer, for uvicorn to log."""
        return json_response({"error": INTERNAL_ERROR}, 500)

    async def rest(request):
        method, path = request.method, request.url.path
        predict = PREDICT_PATH.fullmatch(path) if method == "POST" else None
        model = MODEL_PATH.fullmatch(path) if method == "GET" else None
        if predict:
            name, version, label, verb = predict.groups()
            served.check_spec(name, parse_version(version), label)
            if verb.lower() != "predict":
                raise RequestError(f"kmlp serve answers :predict; this model's signatures are all "
                                   f"predict signatures, so :{verb.lower()} has nothing to run")
            body = await read_body(request, limits)
            return json_response(await work(lambda: dumps(served.predict(parse_json(body)))))
        if model:
            name, version, label, metadata = model.groups()
            version = parse_version(version)
            if not name:
                raise RequestError("Missing model name in request.")
            answer = served.metadata if metadata else served.status
            return json_response(answer(name, version, label))
        if path.lower().startswith("/v1/"):
            raise RequestError(f"Malformed request: {method} {path}")
        raise RequestError(f"Not found: {path}", 404)

    async def page(request):
        if playground is None:
            raise RequestError("this server has no playground", 404)
        return FileResponse(PLAYGROUND_DIR / "index.html", headers=PAGE_HEADERS)

    async def playground_api(request):
        what = request.path_params["what"]
        if playground is None or what not in ("info", "generate", "inspect"):
            raise RequestError(f"Not found: {request.url.path}", 404)
        if what == "info":
            return json_response(playground.info)
        if request.method != "POST":
            raise RequestError(f"{request.url.path} takes POST", 405)
        body = parse_json(await read_body(request, limits))
        return json_response(await work(getattr(playground, what), body))

    every = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [Route("/", answering(page)),
              Route("/playground/{what}", answering(playground_api), methods=["GET", "POST"]),
              Mount("/static", StaticFiles(directory=PLAYGROUND_DIR), name="static"),
              Route("/{path:path}", answering(rest), methods=every)]
    middleware = [Middleware(HostCheck, allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: starlette_error, Exception: uncaught_error})
    app.state.work = work
    return app


# ---------------------------------------------------------------------------------------------
# kmlp serve


def check_flags(host: str, port: int, model_name: str) -> None:
    """:class:`ConfigError` naming the flag, before anything is loaded."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 0 (any free port) to 65535, got {port}")
    if not model_name or re.search(r"[/:\s]", model_name):
        raise ConfigError(f"--model-name must be a name without '/', ':' or spaces, got {model_name!r}")
    if not host:
        raise ConfigError("--host must be an address or host name, got ''")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port), or :class:`ConfigError` saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == 98:  # EADDRINUSE
            raise ConfigError(f"--port {port}: already in use on {host} (another server?); choose "
                              f"another --port, or 0 for any free one") from None
        raise ConfigError(f"--host {host}: cannot listen there ({e.strerror or e})") from None
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def local_hosts(host: str) -> list[str] | None:
    """The Host headers a server listening on ``host`` accepts: on a loopback address only the
    machine's own names, so a web page elsewhere cannot reach it by DNS rebinding; None (any) else."""
    if not is_loopback(host):
        return None
    return list(dict.fromkeys(["127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host]))


def latest_export(run, log=say) -> Path:
    """The highest numbered SavedModel under ``run.path/export`` (the version TensorFlow Serving
    serves by default); exports the run first if it has none."""
    from kmlp.errors import RunError
    from kmlp.export.savedmodel import EXPORT_DIR, export_run, next_version

    root = Path(run.path) / EXPORT_DIR
    latest = next_version(root) - 1
    if latest < 1:
        path = export_run(run)
        log(f"exported {run.path} to {path} (it had no export)")
        return path
    path = root / str(latest)
    if not (path / "saved_model.pb").is_file():
        raise RunError(f"{path}: not a SavedModel (no saved_model.pb); remove it or export again "
                       f"with kmlp export {run.path}")
    return path


def create_app(run_dir, model_name: str = MODEL_NAME, data_path=None, limits: Limits = Limits(),
               allowed_hosts=None, log=say):
    """Load the run in ``run_dir`` (exporting it if it has no SavedModel) and build the application.
    Returns ``(app, served)``."""
    from kmlp.runs.rundir import load_run

    run = load_run(run_dir)
    served = ServedModel(latest_export(run, log), model_name, limits)
    playground = Playground(run, served, data_path, limits)
    if playground.marks_unavailable:
        log(f"train/dev/test marks unavailable: {playground.marks_unavailable}")
    return build_app(served, playground, limits, allowed_hosts), served


@contextmanager
def _stopped_by_signals(server):
    """SIGINT (Ctrl-C) and SIGTERM stop ``server`` gracefully, and after that end nothing else:
    uvicorn re-raises the signal it handled once it has shut down, and it lands here."""
    stop = lambda *_: setattr(server, "should_exit", True)  # noqa: E731
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def server_config(app, limits: Limits = Limits()):
    """uvicorn's settings for ``app``, with the bounds of ``limits``. The HTTP parser is h11 (it can
    bound the request line and headers; httptools cannot), in :class:`BoundedH11Protocol`, which
    adds that bound, the timeouts and the connection cap uvicorn lacks (its ``limit_concurrency`` is
    left off: it counts idle connections); the event loop asyncio's."""
    import uvicorn

    return uvicorn.Config(app, loop="asyncio", http=functools.partial(BoundedH11Protocol, limits=limits),
                          lifespan="off", log_level="warning", access_log=False, server_header=False,
                          timeout_keep_alive=limits.keep_alive_timeout, timeout_graceful_shutdown=5)


def serve(run_dir, host: str = "127.0.0.1", port: int = DEFAULT_PORT, model_name: str = MODEL_NAME,
          data_path=None, limits: Limits = Limits(), log=say) -> int:
    """Serve a run until Ctrl-C or SIGTERM: the REST API and the playground on ``host``:``port``."""
    import uvicorn

    check_flags(host, port, model_name)
    sock = bind(host, port)  # first: a taken port is reported before a minute of loading
    try:
        app, served = create_app(run_dir, model_name, data_path, limits, local_hosts(host), log)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}"
        config = server_config(app, limits)
        server = uvicorn.Server(config)
        log(f"serving {served.path} as model '{served.name}', version {served.version}")
        log(f"  playground:  {url}/")
        log(f"  REST API:    {url}/v1/models/{served.name}  (TensorFlow Serving's; signatures: "
            f"{', '.join(sorted(served.signatures))})")
        if not is_loopback(host):
            log(f"listening on {host}: anyone who can reach this machine can use the model")
        log("Ctrl-C stops the server")
        with _stopped_by_signals(server):
            server.run(sockets=[sock])
        app.state.work.pool.shutdown(wait=False, cancel_futures=True)
    finally:
        sock.close()
    log("kmlp serve: stopped")
    return 0
