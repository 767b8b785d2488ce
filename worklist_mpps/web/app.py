"""The ASGI application: DICOMweb, the management API, the operator page (/), /healthz,
OpenAPI at /openapi.json with its Swagger UI at /docs."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from worklist_mpps import __version__
from worklist_mpps.context import AppContext
from worklist_mpps.services import web_sessions
from worklist_mpps.services.health import WriteProbe, describe_db_error
from worklist_mpps.web import api, dicomweb, guard, reconcile, ui
from worklist_mpps.web.auth import COOKIE, authenticated_user, cookie_path
from worklist_mpps.web.errors import HTTPProblem
from worklist_mpps.web.ui import render

log = logging.getLogger("worklist_mpps.http")
OPEN_PATHS = {"/healthz", "/ui/login"}
OPEN_PREFIXES = ("/static/",)  # the package's own files: the login page needs them
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """A log field without line breaks or other control characters (one line per request)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Refused(Exception):
    """A request answered before its route (a refusal, or a CORS preflight's 204)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


def create_app(ctx: AppContext, dicom_listening: Callable[[], bool] = lambda: True) -> FastAPI:
    app = FastAPI(
        docs_url=None,  # served by web/ui/docs.py from the package's own Swagger UI copy
        redoc_url=None,
        title="worklist-mpps",
        version=__version__,
        description="DICOMweb MPPS (PS3.18 ch. 15), worklist search (ch. 14) and the "
        "worklist management API of worklist-mpps.",
    )
    app.state.ctx = ctx
    cfg = ctx.config
    hosts = guard.allowed_hosts(cfg)

    @app.middleware("http")
    async def guard_authenticate_and_log(request: Request, call_next):  # noqa: ANN001, ANN202
        """One log line per request: the refusal's reason, or the route's status."""
        started = time.perf_counter()
        origin = request.headers.get("origin")
        reason = ""
        try:
            response = await _checked(request, call_next)
        except Refused as exc:
            reason = f" ({exc.reason})"
            if exc.status in (204, 303):
                response = Response(status_code=exc.status, headers=exc.headers)
            elif ui.page_path(request.url.path) and request.method in ("GET", "POST"):
                response = render.error_page(request, exc.status, exc.reason)
                response.headers.update(exc.headers or {})
            else:
                response = JSONResponse({"detail": exc.reason}, exc.status, headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback out
            reason = f" (unexpected {exc.__class__.__name__}: {str(exc)[:200]})"
            response = JSONResponse({"detail": "internal error (logged)"}, 500)
        for name, value in guard.cors_headers(origin, cfg.http_cors_origins).items():
            response.headers.setdefault(name, value)
        user = getattr(request.state, "user", None)
        status = response.status_code
        if not reason and status >= 400 and getattr(request.state, "reason", None):
            reason = f" ({request.state.reason})"
        log.log(
            logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO,
            "HTTP %s %s from %s%s: %d%s in %.1f ms",
            request.method,
            _printable(request.scope.get("path", "")[:200]),
            request.client.host if request.client else "-",
            f" ({user})" if user else "",
            status,
            _printable(reason),
            (time.perf_counter() - started) * 1000,
        )
        return response

    async def _checked(request: Request, call_next):  # noqa: ANN001, ANN202
        """The refusals in order (Host, size, CORS preflight, origin, authentication,
        media type), then the route."""
        headers = request.headers
        if reason := guard.host_refusal(headers.get("host"), hosts):
            # RFC 9112 3.2: no valid Host is a 400; a Host not ours, 421 (RFC 9110 15.5.20)
            raise Refused(400 if guard.host_name(headers.get("host")) is None else 421, reason)
        length = headers.get("content-length", "0")
        limit = cfg.http_max_body
        if limit and "chunked" in headers.get("transfer-encoding", "").lower():
            raise Refused(
                411, "send Content-Length: a request body of unknown length is not accepted"
            )
        if limit and (not length.isdigit() or int(length) > limit):
            raise Refused(413, f"request body larger than {limit} bytes (http_max_body)")
        origin = headers.get("origin")
        if guard.is_preflight(request.method, headers):
            status, cors = guard.preflight(origin or "", cfg.http_cors_origins)
            raise Refused(
                status,
                "CORS preflight"
                if status == 204
                else f"origin {(origin or '')[:100]!r} is not in http_cors_origins",
                cors,
            )
        if reason := guard.origin_refusal(
            request.method,
            origin,
            headers.get("sec-fetch-site"),
            headers.get("host", ""),
            cfg.http_cors_origins,
        ):
            raise Refused(403, reason)
        request.state.user = None
        request.state.login = None
        path = request.url.path
        if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            await _authenticate(request)
        if reason := guard.media_refusal(
            request.method, request.url.path, headers.get("content-type"), length not in ("", "0")
        ):
            raise Refused(415, reason)
        return await call_next(request)

    async def _authenticate(request: Request) -> None:
        """The Authorization header (API, scripts, a browser's basic auth) or, on the
        page's paths, the session cookie; without either: 401, or on a page the login
        form (303)."""
        header = request.headers.get("authorization")
        path = request.url.path
        if header or not cookie_path(path):
            user = authenticated_user(header or "", cfg)
            if user is False:
                raise Refused(401, "authentication required", _challenge())
            request.state.user = user
        token = request.cookies.get(COOKIE)
        if token and cookie_path(path):
            login = await run_in_threadpool(web_sessions.lookup, ctx.db, token)
            request.state.login = login
            if login is not None and request.state.user is None:
                request.state.user = login.user
        if cfg.http_auth_configured and request.state.user is None:
            if request.method == "GET" and ui.page_path(path):
                target = render.local_path(
                    str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
                )
                raise Refused(
                    303, "login required", {"Location": f"/ui/login?next={quote(target)}"}
                )
            raise Refused(401, "authentication required", _challenge())

    def _challenge() -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer" if cfg.http_token else 'Basic realm="worklist-mpps"'}

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem) -> Response:
        request.state.reason = exc.message[:200]
        if ui.page_path(request.url.path):
            return render.error_page(request, exc.status, exc.message)
        headers = {
            # a field value: no CR/LF or other control character (RFC 9110 5.5), no
            # double quote inside the quoted-string (an echoed input could hold them)
            "Warning": '299 worklist-mpps: "{}"'.format(
                _printable(exc.message[:200]).replace('"', "'")
            )
            .encode("ascii", "replace")
            .decode()
        }
        if exc.status == 503:
            headers["Retry-After"] = "5"
        return JSONResponse(exc.body(), exc.status, headers=headers)

    @app.exception_handler(SQLAlchemyError)
    async def database_down(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        reason = describe_db_error(exc).reason
        log.error("HTTP %s %s: %s", request.method, request.url.path, reason)
        return JSONResponse(
            {"detail": f"database unavailable: {reason}"}, 503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")),
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        request.state.reason = f"{first['field']}: {first['message']}"[:200]
        if ui.page_path(request.url.path):
            return render.error_page(request, 422, request.state.reason)
        # DICOMweb answers a bad query parameter with 400 (PS3.18 8.3.4); the API with 422
        status = 400 if request.url.path.startswith("/modality-") else 422
        return JSONResponse(
            {
                "detail": f"{first['field']}: {first['message']}",
                "field": first["field"],
                "errors": errors,
            },
            status,
        )

    probe = WriteProbe(ctx.db)

    @app.get("/healthz", tags=["operations"], summary="Database takes a write and DICOM listening")
    def healthz() -> JSONResponse:
        """503 with the reason ("read-only database: ...", "disk full: ...") when the
        database cannot be written; the write probe runs at most once a second."""
        checks = {
            "dicom": "listening" if dicom_listening() else "down",
            "database": probe.check().reason,
        }
        healthy = checks["database"] == "ok" and checks["dicom"] == "listening"
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", **checks}, 200 if healthy else 503
        )

    app.include_router(dicomweb.router)
    app.include_router(api.router, prefix="/api")
    app.include_router(reconcile.router, prefix="/api")
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=ui.STATIC), name="static")
    return app
