"""The HTTP service: a FastAPI app around an :class:`~genrec.serve.artifact.Artifact` and a micro-batcher.

Errors are answered as ``{"detail": "<one line>"}`` (plus machine-readable extras where useful):
400 for malformed bodies and requests the model cannot answer as asked, 413 for oversized
bodies, 422 for wrongly typed fields, 503 with ``Retry-After`` when the queue is full. Every
handler converts its own failures, so nothing a client sends can take the process down.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

import genrec
from genrec.errors import GenrecError
from genrec.serve.artifact import Artifact, Query, Recommendations, RequestError
from genrec.serve.batcher import BatchSettings, MicroBatcher, Overloaded

log = logging.getLogger("genrec.serve")
ItemId = StrictStr | StrictInt
DEFAULT_MAX_BODY_BYTES = 4 << 20
DRAIN_LIMIT_BYTES = 64 << 20  # an oversized body up to this size is read (and dropped) before its 413 is sent


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[ItemId] = Field(description="external item ids, oldest first (strings or integers, "
                                              "compared as strings)")
    timestamps: list[StrictInt] | None = Field(None, description="unix seconds, one per history item")
    behaviors: list[ItemId] | None = Field(None, description="behavior per history item (checked, not used "
                                                             "by current models)")
    query_time: StrictInt | None = Field(None, description="request time in unix seconds (default: the "
                                                           "last timestamp)")
    k: StrictInt = Field(10, description="number of items to return, 1..num_items")
    exclude_history: StrictBool = Field(True, description="never recommend items already in the history")
    unknown_items: Literal["ignore", "reject"] = Field(
        "ignore", description="ignore: drop unknown ids and list them; reject: answer 400 listing them")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[ItemId]
    candidates: list[ItemId]
    timestamps: list[StrictInt] | None = None
    query_time: StrictInt | None = None
    unknown_items: Literal["ignore", "reject"] = "ignore"


class ScoredItem(BaseModel):
    item: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    ignored_unknown: list[str]
    truncated: bool = Field(description="the history was longer than max_len; its most recent items were used")
    history_used: int = Field(description="number of history items the model read")


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
                  description="Recommendations from an exported genrec artifact. See docs/serving.md.")
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
    """The four endpoints; the handlers' names are the OpenAPI operation ids, so they stay as they are."""

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True,
              responses={400: {"description": "bad request (message in detail)"},
                         503: {"description": "queue full; retry after Retry-After seconds"}})
    async def recommend(req: RecommendRequest) -> Any:
        """Top-k items for a history of external item ids (micro-batched with concurrent requests)."""
        q = artifact.prepare(req.history, req.k, req.timestamps, req.exclude_history, req.unknown_items,
                             req.query_time, req.behaviors)
        recs = await batcher.submit(q)
        return JSONResponse(_response(artifact, recs))

    @app.post("/score", response_model=RecommendResponse, response_model_exclude_none=True,
              responses={400: {"description": "not a ranking model, or bad request"}})
    async def score(req: ScoreRequest) -> Any:
        """Scores of the given candidates for a history (models of kind "ranker" only)."""
        artifact.require_ranker()  # refuse retrievers before touching the model thread
        recs = await batcher.run_alone(artifact.score, req.history, req.candidates, req.timestamps,
                                       req.unknown_items, req.query_time)
        return JSONResponse(_response(artifact, recs))

    @app.get("/health")
    async def health() -> Any:
        """200 while the service accepts requests, 503 while it starts or shuts down."""
        if not batcher.running:
            return _error(503, "not accepting requests (starting or shutting down)", headers={"Retry-After": "1"})
        return {"status": "ok", "queue_depth": batcher.queue_depth}

    @app.get("/metadata")
    async def metadata() -> Any:
        """Which model answers, its catalogue size and window, and the batching settings and counters."""
        return {**artifact.metadata(), "batching": {**settings.to_dict(), "stats": batcher.stats()}}


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
