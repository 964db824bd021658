"""``prefenv label``'s web app: people label a run's queued pairs in a browser.

A Starlette app over the run's :class:`~prefenv.queue.QueryQueue` (``runs/x/comparisons.sqlite``)
and its clip folder (``runs/x/clips``). Routes (a JSON error is ``{"error": message}``):

=================================  ===============================================================
``GET /a/{token}``                 an annotator's link: sets the ``prefenv_annotator`` cookie
                                   (HttpOnly, SameSite=Strict) and redirects (303) to ``/label``
``GET /label``                     the labelling page (401 without a valid annotator cookie)
``GET /api/next``                  the pair to label now (assigning it), or ``"query": null``
``POST /api/label``                ``{"query", "choice", "response_seconds"}`` + ``X-CSRF-Token``
``POST /api/undo``                 take back this annotator's last label (``X-CSRF-Token``)
``GET /api/progress``              this annotator's progress
``GET /clips/{name}``              a clip file (Range requests work); 404 for any name that is
                                   not a bare file of the clip folder
``GET /stats``, ``/api/stats``     per-annotator counts, time per label, gold accuracy, agreement
``GET /export/preferences.jsonl``  the harvested human comparisons (prompt/chosen/rejected)
``GET /export/comparisons.sqlite`` a consistent copy of the store
=================================  ===============================================================

Every request first passes :class:`~prefenv.app.label_security.RequestGuard` (loopback Host or
access token, body limit). Queue calls run in Starlette's thread pool; the queue serialises them
under its lock and each label is durable when the 200 goes out. A refused request writes nothing.
"""

from __future__ import annotations

import html
import inspect
import json
import math
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from prefenv.app.label_data import (
    RunLabelling,
    backup_store,
    export_preferences,
    label_stats,
    read_run_labelling,
)
from prefenv.app.label_security import (
    ANNOTATOR_COOKIE,
    COOKIE_MAX_AGE,
    CSRF_HEADER,
    CsrfTokens,
    RequestGuard,
    error_page,
    is_loopback,
)
from prefenv.queue import CHOICES, QueryQueue, QueueError

__all__ = ["LabelSettings", "make_app", "serve"]

STATIC = Path(__file__).with_name("label_static")
STORE_FILE = "comparisons.sqlite"
CLIP_FOLDER = "clips"
_CLIP_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ACCESS_TOKEN = re.compile(r"[A-Za-z0-9._~-]{8,256}")
_NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True)
class LabelSettings:
    """How ``prefenv label`` serves a run; validated on construction."""

    host: str = "127.0.0.1"
    """Address to bind. Anything but a loopback address requires ``access_token``."""
    port: int = 8765
    """TCP port (0: any free one)."""
    access_token: str | None = None
    """Token every request must carry (8+ URL-safe characters); None on loopback only."""
    gold_rate: float | None = None
    """Share of gold questions per annotator, in [0, 1); None: the run's (labelling.json)."""
    lease_seconds: float | None = None
    """Seconds a handed-out query stays reserved for its annotator; None: the run's, or 600."""
    instructions: str | None = None
    """Text above every pair; None: the run's, else the task kind's."""
    max_body_bytes: int = 4096
    """Largest request body accepted; a bigger one gets 413."""

    def __post_init__(self) -> None:
        if self.access_token is None and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host} exposes the labelling app beyond this machine: pass an "
                "access token (--access-token, 8+ characters: letters, digits, '.', '_', '~', "
                "'-'; e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`), "
                "or bind 127.0.0.1"
            )
        if self.access_token is not None and not _ACCESS_TOKEN.fullmatch(self.access_token):
            raise ValueError(
                "the access token must be 8-256 characters among letters, digits, '.', '_', "
                "'~' and '-' (it goes into links): e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe())'`"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.gold_rate is not None and not 0.0 <= self.gold_rate < 1.0:
            raise ValueError(f"gold_rate must be in [0, 1), got {self.gold_rate}")
        if self.lease_seconds is not None and not self.lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if self.max_body_bytes < 256:
            raise ValueError(f"max_body_bytes must be >= 256, got {self.max_body_bytes}")


class _ApiError(Exception):
    """A refused API request: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _LabelApp:
    """The routes over one run's queue; each public method is one endpoint."""

    def __init__(self, run_dir: Path, queue: QueryQueue, labelling: RunLabelling) -> None:
        self.queue = queue
        self.labelling = labelling
        self.store_path = run_dir / STORE_FILE
        self.clips = run_dir / CLIP_FOLDER
        self.csrf = CsrfTokens()
        self.page = (STATIC / "label.html").read_text(encoding="utf-8")

    # -- who is asking -----------------------------------------------------------------------

    def annotator(self, request: Request) -> str:
        """The annotator of the request's cookie.

        Raises:
            _ApiError: 401 without a valid cookie.
        """
        token = request.cookies.get(ANNOTATOR_COOKIE)
        name = self.queue.annotator_for_token(token) if token else None
        if name is None:
            raise _ApiError(401, "no annotator: open your own link (`prefenv label` prints one "
                                 "per annotator: http://HOST:PORT/a/TOKEN)")  # fmt: skip
        return name

    def check_csrf(self, request: Request, annotator: str) -> None:
        if not self.csrf.check(annotator, request.headers.get(CSRF_HEADER)):
            raise _ApiError(403, "missing or wrong X-CSRF-Token header: reload the page (the "
                                 "token comes with /api/next)")  # fmt: skip

    # -- pages -------------------------------------------------------------------------------

    def enter(self, request: Request) -> Response:
        token = request.path_params["token"]
        if self.queue.annotator_for_token(token) is None:
            return error_page(401, "this annotator link is not valid (unknown, or replaced by "
                                   "`prefenv label --reset-token`): ask for a new one")  # fmt: skip
        response = RedirectResponse("/label", status_code=303, headers=_NO_STORE)
        response.set_cookie(ANNOTATOR_COOKIE, token, max_age=COOKIE_MAX_AGE, path="/",
                            httponly=True, samesite="strict")  # fmt: skip
        return response

    def label_page(self, request: Request) -> Response:
        try:
            annotator = self.annotator(request)
        except _ApiError as error:
            return _no_session_page(request, str(error))
        page = self.page.replace("__CSRF__", self.csrf.token(annotator)).replace(
            "__ANNOTATOR__", html.escape(annotator)
        )
        return HTMLResponse(page, headers=_NO_STORE)

    # -- the labelling API -------------------------------------------------------------------

    def next_query(self, request: Request) -> dict[str, Any]:
        annotator = self.annotator(request)
        query = self.queue.next_for(annotator, gold_rate=self.labelling.gold_rate,
                                    lease_seconds=self.labelling.lease_seconds)  # fmt: skip
        return {
            "query": None if query is None else query.public_id,
            "media": None if query is None else query.media,
            "instructions": self.labelling.instructions_for(None if query is None else query.media),
            "progress": self.queue.progress(annotator),
            "csrf": self.csrf.token(annotator),
        }

    def progress(self, request: Request) -> dict[str, Any]:
        return self.queue.progress(self.annotator(request))

    async def label(self, request: Request) -> dict[str, Any]:
        annotator = await run_in_threadpool(self.annotator, request)
        self.check_csrf(request, annotator)
        query, choice, seconds = _parse_label(await request.body())
        label_id = await run_in_threadpool(self.queue.label, annotator, query, choice, seconds)
        progress = await run_in_threadpool(self.queue.progress, annotator)
        return {"ok": True, "label_id": label_id, "progress": progress}

    async def undo(self, request: Request) -> dict[str, Any]:
        annotator = await run_in_threadpool(self.annotator, request)
        self.check_csrf(request, annotator)
        return await run_in_threadpool(self._undo, annotator)

    def _undo(self, annotator: str) -> dict[str, Any]:
        public_id = self.queue.undo(annotator)
        return {"ok": True, "query": public_id, "media": self.queue.query(public_id).media,
                "progress": self.queue.progress(annotator)}  # fmt: skip

    # -- files, stats, exports ---------------------------------------------------------------

    def clip(self, request: Request) -> Response:
        name = request.path_params["name"]
        folder = self.clips.resolve()
        path = (folder / name).resolve() if _CLIP_NAME.fullmatch(name) else None
        if path is None or path.parent != folder or not path.is_file():
            raise _ApiError(404, f"no clip {name!r} in this run's clip folder")
        return FileResponse(path, headers={"cache-control": "private, max-age=3600"})

    def stats(self, request: Request) -> dict[str, Any]:
        return label_stats(self.queue, self.store_path, self.labelling)

    def stats_page(self, request: Request) -> Response:
        return FileResponse(STATIC / "stats.html", headers=_NO_STORE)

    def export_jsonl(self, request: Request) -> Response:
        return Response(export_preferences(self.store_path), media_type="application/x-ndjson",
                        headers={**_NO_STORE, "content-disposition":
                                 'attachment; filename="preferences.jsonl"'})  # fmt: skip

    def export_store(self, request: Request) -> Response:
        folder = Path(tempfile.mkdtemp(prefix="prefenv-backup-"))
        try:
            backup_store(self.store_path, folder / STORE_FILE)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(folder / STORE_FILE, media_type="application/vnd.sqlite3",
                            filename=STORE_FILE, headers=_NO_STORE,
                            background=BackgroundTask(shutil.rmtree, folder, True))  # fmt: skip

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", lambda request: RedirectResponse("/label", status_code=303)),
            Route("/a/{token}", self.enter),
            Route("/label", self.label_page),
            Route("/api/next", _api(self.next_query)),
            Route("/api/label", _api(self.label), methods=["POST"]),
            Route("/api/undo", _api(self.undo), methods=["POST"]),
            Route("/api/progress", _api(self.progress)),
            Route("/api/stats", _api(self.stats)),
            Route("/clips/{name:path}", _api(self.clip)),
            Route("/stats", self.stats_page),
            Route("/export/preferences.jsonl", self.export_jsonl),
            Route("/export/comparisons.sqlite", self.export_store),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]


def _parse_label(body: bytes) -> tuple[str, str, float | None]:
    """``(query, choice, response_seconds)`` of a ``POST /api/label`` body.

    Raises:
        _ApiError: 400 naming what is wrong.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _ApiError(400, f"the body is not JSON ({error}): send {{\"query\": id, "
                             "\"choice\": ..., \"response_seconds\": s}") from error  # fmt: skip
    if not isinstance(data, dict):
        raise _ApiError(400, "the body must be a JSON object with query, choice and "
                             "response_seconds")  # fmt: skip
    query, choice, seconds = data.get("query"), data.get("choice"), data.get("response_seconds")
    if not isinstance(query, str) or not 0 < len(query) <= 64:
        raise _ApiError(400, f"query must be the id string /api/next gave, got {query!r}")
    if choice not in CHOICES:
        raise _ApiError(400, f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float)
        or not math.isfinite(seconds) or seconds < 0
    ):  # fmt: skip
        raise _ApiError(400, f"response_seconds must be a number >= 0 or null, got {seconds!r}")
    return query, choice, None if seconds is None else float(seconds)


def _api(handler: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint from a handler returning a dict or a Response (a sync handler runs in the
    thread pool); a refusal (:class:`_ApiError`, :class:`QueueError`) becomes ``{"error"}``."""

    async def endpoint(request: Request) -> Response:
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(request)
            else:
                result = await run_in_threadpool(handler, request)
        except (_ApiError, QueueError) as error:
            return JSONResponse({"error": str(error)}, status_code=error.status, headers=_NO_STORE)
        return result if isinstance(result, Response) else JSONResponse(result, headers=_NO_STORE)

    return endpoint


def _no_session_page(request: Request, message: str) -> Response:
    """``/label`` without a valid annotator cookie: 401, and one automatic retry.

    A browser holds back a SameSite=Strict cookie on the redirect after a link clicked in
    another site (mail, chat), so the page reloads itself once, same-site, before giving up.
    """
    if ANNOTATOR_COOKIE not in request.cookies and "retry" not in request.query_params:
        return HTMLResponse(
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta http-equiv="refresh" content="0; url=/label?retry=1"><title>prefenv label'
            "</title></head><body><p>Opening the labelling page...</p></body></html>",
            status_code=401, headers=_NO_STORE)  # fmt: skip
    return error_page(401, message)


def make_app(run_dir: str | Path, settings: LabelSettings | None = None) -> Starlette:
    """The labelling app of the run in ``run_dir`` (it must hold ``comparisons.sqlite``).

    Args:
        run_dir: the run folder (``comparisons.sqlite``, ``clips/``, ``labelling.json``).
        settings: how to serve it (default :class:`LabelSettings`).

    Raises:
        StoreMissingError: the run has no comparison store yet.
        ValueError: ``labelling.json`` is malformed.
    """
    settings = settings or LabelSettings()
    run_dir = Path(run_dir)
    labelling = read_run_labelling(run_dir, instructions=settings.instructions,
                                   gold_rate=settings.gold_rate,
                                   lease_seconds=settings.lease_seconds)  # fmt: skip
    queue = QueryQueue(run_dir / STORE_FILE)
    app = _LabelApp(run_dir, queue, labelling)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        queue.close()

    guard = Middleware(RequestGuard, access_token=settings.access_token,
                       max_body_bytes=settings.max_body_bytes)  # fmt: skip
    return Starlette(routes=app.routes(), middleware=[guard], lifespan=lifespan)


def serve(run_dir: str | Path, settings: LabelSettings | None = None) -> None:
    """Serve the run's labelling app with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    settings = settings or LabelSettings()
    uvicorn.run(make_app(run_dir, settings), host=settings.host, port=settings.port,
                log_level="warning", server_header=False)  # fmt: skip
