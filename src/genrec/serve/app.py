"""The HTTP service: a FastAPI app around an :class:`~genrec.serve.artifact.Artifact` and a micro-batcher.

Errors are answered as ``{"detail": "<one line>"}`` (plus machine-readable extras where useful):
400 for malformed bodies and requests the model cannot answer as asked, 413 for oversized
bodies, 422 for wrongly typed or out-of-range fields, 503 with ``Retry-After`` when the queue is full. Every
handler converts its own failures, so nothing a client sends can take the process down. The bodies are the
models of :mod:`genrec.serve.schema`, which ``/openapi.json`` documents; ``/docs`` renders that schema as a
page that loads nothing from the network.
"""

# No ``from __future__ import annotations`` here: the request models are built per artifact (``k`` bounded by
# its catalogue), and FastAPI reads a handler's annotations as objects, which a local class only is when they
# are evaluated at definition time.
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import genrec
from genrec.errors import GenrecError
from genrec.serve.artifact import Artifact, Query, Recommendations, RequestError
from genrec.serve.batcher import BatchSettings, MicroBatcher, Overloaded
from genrec.serve.docs_page import docs_page
from genrec.serve.schema import (
    HealthResponse,
    MetadataResponse,
    RecommendResponse,
    ScoreRequest,
    error_responses,
    recommend_request,
    request_examples,
)

log = logging.getLogger("genrec.serve")
DEFAULT_MAX_BODY_BYTES = 4 << 20
DRAIN_LIMIT_BYTES = 64 << 20  # an oversized body up to this size is read (and dropped) before its 413 is sent


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


class _BodyGuard:
    """ASGI middleware: caps the body size (413), rejects non-UTF-8 bodies (400), reads bodies as JSON,
    and tells the batcher which ``/recommend`` requests are inside the server."""

    def __init__(self, app: Any, max_bytes: int, batcher: MicroBatcher | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_limit = max(DRAIN_LIMIT_BYTES, 4 * max_bytes)  # bytes of an oversized body read before its 413
        self.batcher = batcher

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if self.batcher is not None and scope.get("path") == "/recommend":
            with self.batcher.arriving():  # from the first byte, so the batcher knows who is on the way
                await self._guarded(scope, receive, send)
        else:
            await self._guarded(scope, receive, send)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(f"request body of {declared} bytes exceeds the limit of {self.max_bytes}",
                                  0, int(declared) <= self.drain_limit, scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            more = msg.get("more_body", False)
            if size > self.max_bytes:
                await self._too_large(f"request body exceeds the limit of {self.max_bytes} bytes", size, more,
                                      scope, receive, send)
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await _error(400, f"malformed body: not valid UTF-8 (byte {exc.start})")(scope, receive, send)
            return
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and not (ctype == b"application/json" or ctype.endswith(b"+json")):
            # every endpoint takes JSON: read it as JSON whatever the client declared (e.g. `curl -d`)
            scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
                     + [(b"content-type", b"application/json")]}
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, message: str, size: int, more: bool, scope: dict, receive: Any, send: Any) -> None:
        """Answer 413 so that the client sees it: most clients send their whole body before reading, and a
        server that closes on an unread body hands them a connection reset instead. The rest of the body is read
        and dropped (up to ``drain_limit`` bytes, beyond which the connection is simply closed), then the
        413 goes out with ``Connection: close``."""
        while more and size <= self.drain_limit:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            size += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        await _error(413, message, headers={"Connection": "close"})(scope, receive, send)


def _response(art: Artifact, recs: Recommendations) -> dict[str, Any]:
    items = []
    for item, score in recs:
        row: dict[str, Any] = {"item": item, "score": score}
        if art.titles is not None:
            title = art.title(item)
            if title is not None:
                row["title"] = title
        items.append(row)
    return {"items": items, "ignored_unknown": recs.ignored_unknown, "truncated": recs.truncated,
            "history_used": recs.history_used}


def create_app(artifact: Artifact, settings: BatchSettings | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """Build the app; the micro-batcher starts in the lifespan handler and drains on shutdown."""
    settings = settings or BatchSettings()
    batcher: MicroBatcher[Query, Recommendations] = MicroBatcher(artifact.run, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title=f"genrec: {artifact.model_name}", version=genrec.__version__, lifespan=lifespan,
                  description="Recommendations from an exported genrec artifact. See docs/serving.md.",
                  docs_url=None, redoc_url=None)  # FastAPI's pages load from a CDN: /docs is ours
    app.state.artifact = artifact
    app.state.batcher = batcher
    app.add_middleware(_BodyGuard, max_bytes=max_body_bytes, batcher=batcher)
    _add_error_handlers(app)
    _add_routes(app, artifact, batcher, settings)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure answers one JSON line (see the module docstring); none escapes as a traceback."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            return _error(400, f"malformed JSON: {ctx.get('error', 'cannot parse the body')}")
        slim = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
                for e in errors[:20]]
        first = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in slim[:3])
        return _error(422, f"invalid request: {first}", errors=slim)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail, cause = str(exc.detail), exc.__cause__
        if exc.status_code == 400 and cause is not None:  # FastAPI's "error parsing the body": say why
            why = "nested too deeply" if isinstance(cause, RecursionError) else (str(cause).splitlines() or [""])[0]
            detail = f"malformed JSON: {why[:200] or type(cause).__name__}"
        return _error(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return _error(400, str(exc), **exc.details)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _add_routes(app: FastAPI, artifact: Artifact, batcher: MicroBatcher[Query, Recommendations],
                settings: BatchSettings) -> None:
    """The endpoints the artifact's kinds can answer (``/recommend`` for retrievers and generators, ``/score``
    for rankers), ``/health``, ``/metadata`` and ``/docs``; the handlers' names are the OpenAPI operation ids,
    so they stay as they are."""
    from genrec.models.base import GENERATOR, RANKER, RETRIEVER

    recommend_ex, score_ex = request_examples(list(artifact.external_ids), artifact.num_items)
    if RETRIEVER in artifact.kinds or GENERATOR in artifact.kinds:
        request = recommend_request(artifact.num_items)

        @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True,
                  responses=error_responses(400, 413, 422, 503),
                  openapi_extra=_examples(request.__name__, recommend_ex))
        async def recommend(req: request) -> Any:  # type: ignore[valid-type]
            """Top-k items for a history of external item ids (micro-batched with concurrent requests)."""
            q = artifact.prepare(req.history, req.k, req.timestamps, req.exclude_history, req.unknown_items,
                                 req.query_time, req.behaviors)
            recs = await batcher.submit(q)
            return JSONResponse(_response(artifact, recs))
    else:
        _not_served(app, "/recommend", f"model '{artifact.model_name}' is not a retriever or generator (kinds: "
                                       f"{', '.join(artifact.kinds)}); use POST /score")

    if RANKER in artifact.kinds:
        @app.post("/score", response_model=RecommendResponse, response_model_exclude_none=True,
                  responses=error_responses(400, 413, 422, 503), openapi_extra=_examples("ScoreRequest", score_ex))
        async def score(req: ScoreRequest) -> Any:
            """Scores of the given candidates for a history, best first (models of kind "ranker")."""
            recs = await batcher.run_alone(artifact.score, req.history, req.candidates, req.timestamps,
                                           req.unknown_items, req.query_time)
            return JSONResponse(_response(artifact, recs))
    else:
        _not_served(app, "/score", f"model '{artifact.model_name}' is not a ranker (kinds: "
                                   f"{', '.join(artifact.kinds)}); use POST /recommend")

    @app.get("/health", response_model=HealthResponse, responses=error_responses(503))
    async def health() -> Any:
        """200 while the service accepts requests, 503 while it starts or shuts down."""
        if not batcher.running:
            return _error(503, "not accepting requests (starting or shutting down)", headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "queue_depth": batcher.queue_depth})

    @app.get("/metadata", response_model=MetadataResponse)
    async def metadata() -> Any:
        """Which model answers, its catalogue size and window, and the batching settings and counters."""
        return JSONResponse({**artifact.metadata(), "batching": {**settings.to_dict(), "stats": batcher.stats()}})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()))


def _not_served(app: FastAPI, path: str, message: str) -> None:
    """A route this artifact's kind cannot answer: unlisted in the schema, 404 with a message saying why."""

    @app.post(path, include_in_schema=False)
    async def not_served() -> JSONResponse:
        return _error(404, message)


def _examples(model: str, examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` giving a JSON request body its examples (FastAPI keeps the generated schema)."""
    schema = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"content": {"application/json": {"schema": schema, "examples": examples}},
                            "required": True}}


def run_server(app: FastAPI, *, host: str, port: int, log_level: str = "info", access_log: bool = True,
               drain_timeout: int = 30) -> None:
    """Serve ``app`` with uvicorn until SIGTERM or Ctrl+C, then drain in-flight requests and return.

    uvicorn re-raises the signal it caught once it has drained, so a service stopped the ordinary way (``kill``,
    a container or systemd stop) would report death by SIGTERM (status -15) although it shut down cleanly; here
    SIGTERM ends with status 0. Ctrl+C still ends as an interrupt (``KeyboardInterrupt``), as before.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        interrupted = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.interrupted = self.interrupted or sig == signal.SIGINT
            super().handle_exit(sig, frame)

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            if self.interrupted:
                raise KeyboardInterrupt

    server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                    timeout_graceful_shutdown=drain_timeout))
    server.run()
    if not server.started:
        raise GenrecError(f"the server on {host}:{port} did not start (see the log above)")
