"""The ASGI application: DICOMweb, the management API, /healthz, OpenAPI at /openapi.json."""

from __future__ import annotations

import base64
import hmac
import logging
import time
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..dimse.context import ServerContext
from ..health import WriteProbe, describe_db_error
from . import api, dicomweb
from .errors import HTTPProblem

log = logging.getLogger("worklist_mpps.http")
OPEN_PATHS = {"/healthz"}


def _authenticated_user(request: Request, ctx: ServerContext) -> str | None | bool:
    """The user name, None when no authentication is configured, False when refused."""
    cfg = ctx.config
    if not cfg.http_auth_configured:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if cfg.http_token and scheme.lower() == "bearer":
        return "token" if hmac.compare_digest(credentials.strip(), cfg.http_token) else False
    if cfg.http_username and scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(credentials).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok = hmac.compare_digest(user, cfg.http_username) and hmac.compare_digest(
            password, cfg.http_password)
        return user if ok else False
    return False


def create_app(ctx: ServerContext, dicom_listening: Callable[[], bool] = lambda: True
               ) -> FastAPI:
    app = FastAPI(
        title="worklist-mpps", version=__version__,
        description="DICOMweb MPPS (PS3.18 ch. 15), worklist search (ch. 14) and the "
                    "worklist management API of worklist-mpps.")
    app.state.ctx = ctx

    @app.middleware("http")
    async def authenticate_and_log(request: Request, call_next):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        length = request.headers.get("content-length", "0")
        limit = ctx.config.http_max_body
        if limit and "chunked" in request.headers.get("transfer-encoding", "").lower():
            return JSONResponse({"detail": "send Content-Length: a request body of unknown "
                                           "length is not accepted"}, 411)
        if limit and (not length.isdigit() or int(length) > limit):
            return JSONResponse({"detail": f"request body larger than {limit} bytes "
                                           "(http_max_body)"}, 413)
        user = None
        if request.url.path not in OPEN_PATHS:
            user = _authenticated_user(request, ctx)
            if user is False:
                scheme = "Bearer" if ctx.config.http_token else 'Basic realm="worklist-mpps"'
                response = JSONResponse({"detail": "authentication required"}, 401,
                                        headers={"WWW-Authenticate": scheme})
                log.warning("HTTP %s %s from %s: 401", request.method, request.url.path,
                            request.client.host if request.client else "-")
                return response
        request.state.user = user
        response = await call_next(request)
        log.info("HTTP %s %s from %s%s: %d in %.1f ms", request.method, request.url.path,
                 request.client.host if request.client else "-",
                 f" ({user})" if user else "", response.status_code,
                 (time.perf_counter() - started) * 1000)
        return response

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem) -> JSONResponse:  # noqa: ARG001
        headers = {"Warning": f'299 worklist-mpps: "{exc.message[:200]}"'.encode(
            "ascii", "replace").decode()}
        if exc.status == 503:
            headers["Retry-After"] = "5"
        return JSONResponse(exc.body(), exc.status, headers=headers)

    @app.exception_handler(SQLAlchemyError)
    async def database_down(request: Request, exc: SQLAlchemyError) -> JSONResponse:  # noqa: ARG001
        reason = describe_db_error(exc).reason
        log.error("HTTP %s %s: %s", request.method, request.url.path, reason)
        return JSONResponse({"detail": f"database unavailable: {reason}"}, 503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:  # noqa: ARG001
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query",
                                                                           "path")),
                   "message": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        # DICOMweb answers a bad query parameter with 400 (PS3.18 8.3.4); the API with 422
        status = 400 if request.url.path.startswith("/modality-") else 422
        return JSONResponse({"detail": f"{first['field']}: {first['message']}",
                             "field": first["field"], "errors": errors}, status)

    probe = WriteProbe(ctx.db)

    @app.get("/healthz", tags=["operations"],
             summary="Database takes a write and DICOM listening")
    def healthz() -> JSONResponse:
        """503 with the reason ("read-only database: ...", "disk full: ...") when the
        database cannot be written; the write probe runs at most once a second."""
        checks = {"dicom": "listening" if dicom_listening() else "down",
                  "database": probe.check().reason}
        healthy = checks["database"] == "ok" and checks["dicom"] == "listening"
        return JSONResponse({"status": "ok" if healthy else "unhealthy", **checks},
                            200 if healthy else 503)

    app.include_router(dicomweb.router)
    app.include_router(api.router, prefix="/api")
    return app
