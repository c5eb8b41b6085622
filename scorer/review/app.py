"""The review server: a Starlette app behind a token, serving three pages and a small JSON API.

Every URL starts with `/<token>/`; any other request is refused with 403 before routing, so a
page on another origin (or another user of the machine) cannot read or label anything. The
browser names snippets by id only: audio is served from the paths the database knows for the
snippet's content (scorer.review.audio), static files from a fixed list read at start-up.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from sqlalchemy import Engine, select
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import LABEL_ORIGIN_REVIEW, ModelVersion
from scorer.review import store
from scorer.review.audio import AudioUnavailable, OriginalFiles, TooLong, Vocals, media_type
from scorer.review.members import MemberVotes
from scorer.settings import Settings

PAGES = {"queue": "queue.html", "snippet": "snippet.html", "summary": "summary.html"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
SECURITY_HEADERS = [
    # Nothing from elsewhere, no inline script; the page may not be framed (a key press in a
    # frame would label a snippet); no Referer carries the token out.
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        b"form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) of every file shipped in scorer/review/static."""
    folder = resources.files("scorer.review") / "static"
    out = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


class TokenGate:
    """403 for every request whose path does not start with `/<token>/` (compared in constant
    time), and the security headers on every response."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        path: str = scope["path"]
        first = path.split("/", 2)[1] if path.startswith("/") and len(path) > 1 else ""
        if not hmac.compare_digest(first.encode(), self.token):
            await Response("forbidden: this page needs the URL `scorer review` printed\n", 403)(
                scope, receive, send_with_headers
            )
            return
        await self.app(scope, receive, send_with_headers)


class Review:
    """The endpoints, over one engine and the settings (data dir, model dir, device)."""

    def __init__(self, settings: Settings, engine: Engine, model_key: str | None) -> None:
        self.settings = settings
        self.sessions = make_sessionmaker(engine)
        self.model_key = model_key
        self.files = static_files()
        self.originals = OriginalFiles()
        self.vocals = Vocals(settings)
        self.votes = MemberVotes(settings)

    # --- helpers -----------------------------------------------------------------------------

    def _model(self, session: Any, key: str | None) -> ModelVersion:
        key = key or self.model_key
        model = queries.model_by_name_or_id(session, key) if key else queries.active_model(session)
        if model is None:
            raise HTTPException(404, f"no model version {key!r}" if key else "no active model")
        return model

    def _static(self, name: str) -> Response:
        if name not in self.files:
            raise HTTPException(404, "no such file")
        body, kind = self.files[name]
        return Response(body, media_type=kind)

    # --- pages ---------------------------------------------------------------------------------

    def home(self, request: Request) -> Response:
        return RedirectResponse(str(request.url_for("page", page="queue")), 303)

    def page(self, request: Request) -> Response:
        name = request.path_params["page"]
        if name not in PAGES:
            raise HTTPException(404, "no such page")
        return self._static(PAGES[name])

    def snippet_page(self, request: Request) -> Response:
        from scorer.db.models import Snippet

        with self.sessions() as s:
            if s.get(Snippet, request.path_params["snippet_id"]) is None:
                raise HTTPException(404, "no such snippet")
        return self._static(PAGES["snippet"])

    def static(self, request: Request) -> Response:
        return self._static(request.path_params["name"])

    # --- API -----------------------------------------------------------------------------------

    def api_models(self, request: Request) -> Response:
        with self.sessions() as s:
            default = self._model(s, None)
            return JSONResponse({"models": store.model_versions(s), "default": default.id})

    def api_queue(self, request: Request) -> Response:
        q = request.query_params
        with self.sessions() as s:
            model = self._model(s, q.get("model"))
            classes = list(model.classes)
            sort = q.get("sort") or "entropy"
            predicted = q.get("predicted") or None
            truth = q.get("truth") or None
            reviewed = {"": None, "yes": True, "no": False}.get(q.get("reviewed", ""), "bad")
            if sort not in store.SORTS:
                raise store.BadRequest(f"sort must be one of {', '.join(store.SORTS)}")
            if predicted is not None and predicted not in classes:
                raise store.BadRequest(f"predicted must be one of {', '.join(classes)}")
            if truth is not None and truth not in [*classes, "unlabelled"]:
                raise store.BadRequest(f"truth must be one of {', '.join(classes)}, unlabelled")
            if reviewed == "bad":
                raise store.BadRequest("reviewed must be yes or no")
            limit = _int(q.get("limit"), store.PAGE_SIZE, 1, store.MAX_PAGE_SIZE, "limit")
            f = store.QueueFilter(model.id, sort, predicted, truth, reviewed)  # type: ignore[arg-type]
            page = store.queue_page(s, f, q.get("after") or None, limit)
        return JSONResponse(
            {"model": {"id": model.id, "name": model.name, "classes": classes}, **page}
        )

    def api_snippet(self, request: Request) -> Response:
        with self.sessions() as s:
            model = self._model(s, request.query_params.get("model"))
            detail = store.snippet_detail(s, request.path_params["snippet_id"], model)
        if detail is None:
            raise HTTPException(404, "no such snippet")
        return JSONResponse(detail)

    def _verified(self, snippet_id: int) -> tuple[str, Any]:
        from scorer.db.models import Snippet

        with self.sessions() as s:
            snippet = s.get(Snippet, snippet_id)
            if snippet is None:
                raise HTTPException(404, "no such snippet")
            sha = snippet.sha256
            candidates = queries.paths_of(s, [sha]).get(sha, [])
        try:
            return sha, self.originals.find(sha, candidates)
        except AudioUnavailable as exc:
            raise HTTPException(404, f"audio unavailable: {exc}") from exc

    def api_original(self, request: Request) -> Response:
        _, found = self._verified(request.path_params["snippet_id"])
        return FileResponse(found.path, media_type=media_type(found.path))

    def api_vocals(self, request: Request) -> Response:
        sha, found = self._verified(request.path_params["snippet_id"])
        with self.sessions() as s:
            model = self._model(s, request.query_params.get("model"))
            frontend = dict(model.frontend)
        try:
            path = self.vocals.get(sha, found.path, frontend)
        except TooLong as exc:
            raise HTTPException(422, str(exc)) from exc
        except Exception as exc:  # an undecodable file, a separator that cannot load: say why
            raise HTTPException(500, f"vocals could not be separated: {exc}") from exc
        return FileResponse(path, media_type="audio/wav")

    def api_members(self, request: Request) -> Response:
        from scorer.db.models import Snippet

        with self.sessions() as s:
            snippet = s.get(Snippet, request.path_params["snippet_id"])
            if snippet is None:
                raise HTTPException(404, "no such snippet")
            model = self._model(s, request.query_params.get("model"))
            return JSONResponse(self.votes.votes(s, model, snippet.sha256))

    async def api_label(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise store.BadRequest("the body must be JSON") from None
        if not isinstance(body, dict):
            raise store.BadRequest("the body must be a JSON object")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self._label, request.path_params["snippet_id"], body)

    def _label(self, snippet_id: int, body: dict[str, Any]) -> Response:
        from scorer.db.models import FILE_WINDOW, Prediction, Snippet

        model_key = body.get("model")
        with self.sessions() as s:
            model = self._model(s, None if model_key is None else str(model_key))
            label = body.get("label")
            if label not in model.classes:
                raise store.BadRequest(f"label must be one of {', '.join(model.classes)}")
            snippet = s.get(Snippet, snippet_id)
            if snippet is None:
                raise HTTPException(404, "no such snippet")
            predicted = s.scalar(
                select(Prediction.label)
                .where(Prediction.sha256 == snippet.sha256)
                .where(Prediction.model_version_id == model.id)
                .where(Prediction.window_index == FILE_WINDOW)
            )
            event = queries.set_label(
                s, snippet.sha256, label, origin=LABEL_ORIGIN_REVIEW,
                model_version_id=model.id, predicted_label=predicted,
            )  # fmt: skip
            if event is None:  # deleted between the two statements
                raise HTTPException(404, "no such snippet")
            s.commit()
            return JSONResponse(
                {
                    "id": snippet_id,
                    "label": event.label,
                    "previous_label": event.previous_label,
                    "origin": event.origin,
                    "labelled_at": event.created_at.isoformat(),
                }
            )

    def api_summary(self, request: Request) -> Response:
        with self.sessions() as s:
            model = self._model(s, request.query_params.get("model"))
            return JSONResponse(store.summary(s, model))


def _int(text: str | None, default: int, low: int, high: int, name: str) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise store.BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(text)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, 400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, exc.status_code)


def build_app(
    settings: Settings,
    engine: Engine,
    token: str,
    *,
    model_key: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> ASGIApp:
    """The ASGI app: pages and API under `/<token>/`, 403 elsewhere. `allowed_hosts`: the Host
    headers accepted (default: loopback names, which stops DNS rebinding); ["*"] for any."""
    review = Review(settings, engine, model_key)
    sid = "/snippets/{snippet_id:int}"
    routes = [
        Route("/", review.home),
        Route("/snippet/{snippet_id:int}", review.snippet_page),
        Route("/static/{name}", review.static),
        Route("/api/models", review.api_models),
        Route("/api/queue", review.api_queue),
        Route("/api/summary", review.api_summary),
        Route(f"/api{sid}", review.api_snippet),
        Route(f"/api{sid}/original", review.api_original),
        Route(f"/api{sid}/vocals", review.api_vocals),
        Route(f"/api{sid}/members", review.api_members),
        Route(f"/api{sid}/label", review.api_label, methods=["POST"]),
        Route("/{page}", review.page, name="page"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        store.BadRequest: _bad_request,
        HTTPException: _http_error,
    }
    app = Starlette(
        routes=[Mount(f"/{token}", routes=routes)],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)
        ],
        exception_handlers=handlers,
    )
    return TokenGate(app, token)
