"""Browser log-on and log-off."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request, Response, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    client_ip,
    csrf_token,
)
from aimms_portal.api.schemas import LoginIn, LoginOut, UserPublic
from aimms_portal.auth import tokens
from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import PermissionDenied
from aimms_portal.models import utcnow
from aimms_portal.services import auth

router = APIRouter(prefix=f"{API_PREFIX}/auth", tags=["auth"])


def _require_json(request: Request) -> None:
    # a cross-site HTML form cannot send JSON, so this also stops log-on CSRF
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "Send the log-on as application/json."
        )


@router.post("/login", response_model=LoginOut)
def login(body: LoginIn, request: Request, response: Response) -> LoginOut:
    """Log on with user name and password; sets the session cookie."""
    _require_json(request)
    settings = get_settings()
    lifetime = timedelta(hours=settings.browser_session_hours)
    with session_scope() as session:
        user, secret = auth.log_on(
            session,
            username=body.username,
            password=body.password,
            lifetime=lifetime,
            source_ip=client_ip(request),
            user_agent=request.headers.get("user-agent", ""),
        )
    csrf = csrf_token(secret)
    max_age = int(lifetime.total_seconds())
    secure = settings.secure_cookies
    response.set_cookie(
        SESSION_COOKIE, secret, max_age=max_age, httponly=True, samesite="lax", secure=secure
    )
    # readable by the page's scripts, which echo it in the CSRF header
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, httponly=False, samesite="lax", secure=secure
    )
    return LoginOut(
        user=UserPublic.model_validate(user), csrf_token=csrf, expires_at=utcnow() + lifetime
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response) -> None:
    """End the browser log-on of this cookie and clear the cookies."""
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        if not tokens.same_secret(request.headers.get(CSRF_HEADER, ""), csrf_token(secret)):
            raise PermissionDenied(f"Missing or wrong {CSRF_HEADER} header.", code="csrf_failed")
        with session_scope() as session:
            auth.log_off(session, session_secret=secret, source_ip=client_ip(request))
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
