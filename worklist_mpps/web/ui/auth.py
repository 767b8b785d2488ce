"""The login form and logout: a session cookie for the configured credentials
(``http_username``/``http_password`` or the ``http_token``), audited like every change."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from worklist_mpps.services import audit, web_sessions
from worklist_mpps.web.auth import COOKIE, LoginThrottle, login_user
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.ui import render

log = logging.getLogger("worklist_mpps.http")
router = APIRouter(include_in_schema=False)
throttle = LoginThrottle()


def _login_page(request: Request, status: int = 200, error: str = "", next_: str = "/") -> Response:
    cfg = web_context(request).config
    html = render.templates.get_template("login.html").render(
        error=error,
        next=render.local_path(next_),
        username_field=bool(cfg.http_username),
        token_field=bool(cfg.http_token),
        nav=(),
        user=None,
        csrf="",
        path=request.url.path,
        version="",
        refresh_seconds=0,
        auth_configured=cfg.http_auth_configured,
        today="",
    )
    return HTMLResponse(html, status, headers=render.PAGE_HEADERS)


@router.get("/ui/login")
def login_form(request: Request, next: str = "/") -> Response:
    if not web_context(request).config.http_auth_configured:
        return render.redirect(render.local_path(next))
    return _login_page(request, next_=next)


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """The form's credentials, checked like the Authorization header's; 10 failures a
    minute from one address and the form answers 429 until the minute is over."""
    ctx = web_context(request)
    address = request.client.host if request.client else "-"
    body = (await request.body()).decode("utf-8", "replace")
    fields = dict(parse_qsl(body, keep_blank_values=True, max_num_fields=10))
    next_ = render.local_path(fields.get("next"))
    if throttle.blocked(address):
        request.state.reason = "too many failed logins"
        return _login_page(request, 429, "Too many failed logins: wait a minute.", next_)
    user = login_user(
        ctx.config, fields.get("username", ""), fields.get("password", ""), fields.get("token", "")
    )
    if user is None:
        throttle.failed(address)
        request.state.reason = "login refused"
        return _login_page(request, 401, "Wrong user name, password or token.", next_)
    token, _ = web_sessions.create(ctx.db, user, address, ctx.config.http_session_hours)
    request.state.user = user
    with ctx.db.write() as session:
        audit.record(session, web_actor(request), "ui.login", f"user:{user}", None)
    response = render.redirect(next_)
    render.set_session_cookie(request, response, token)
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    await render.form(request)  # the CSRF check: another site cannot log the user out
    web_sessions.end(web_context(request).db, request.cookies.get(COOKIE))
    response = render.redirect(
        "/ui/login" if web_context(request).config.http_auth_configured else "/"
    )
    response.delete_cookie(COOKIE, path="/")
    return response
