"""Sign-in for the web board: who is asking, and whether a post really comes from one of our pages.

Nothing on the board is public. A request is signed in by one of, in this order:

1. **An SSO proxy** (oauth2-proxy and the like) in front of the board: its header (`SOPFLOW_WEB_PROXY_HEADER`,
   default `X-Forwarded-Email`) names the person, and is believed only from the addresses in
   `SOPFLOW_WEB_TRUSTED_PROXIES`. From anywhere else the header is ignored, so a client cannot name itself.
2. **A session cookie**, set by the login page for a person's access token (`sopflow staff token EMAIL`): signed
   with `SOPFLOW_WEB_SECRET` (itsdangerous), HttpOnly (no script reads it), SameSite=Lax (no other site's form posts
   with it), Secure when the board is served over https, and valid for a working day. It carries the token's hash,
   so revoking the token (or removing the person) ends the session at once.
3. **The dev user** (`SOPFLOW_WEB_DEV_USER`), which only `sopflow dev` sets: a local stack opens signed in.

Every post carries the session's CSRF token (a hidden `_csrf` field), compared in constant time: a page of another
site cannot read it, so it cannot forge a post even where a browser would send the cookie. The login form, posted
before any session exists, carries a short-lived signed token of its own.

Staff see and act on every deal unless the staff directory limits them (`sopflow.staff.Limits`); a person signed
in through the proxy or as the dev user but not listed in the directory has no limits.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import ValidationError

from sopflow.config import Settings
from sopflow.staff import Person, Staff, StaffFileError, load_staff, token_hash

log = logging.getLogger("sopflow.web")

SESSION_COOKIE = "sopflow_session"
CSRF_FIELD = "_csrf"
SESSION_SECONDS = 12 * 3600
LOGIN_FORM_SECONDS = 3600

Via = Literal["proxy", "token", "dev"]


class SignInRequired(Exception):
    """No one is signed in: a browser is sent to the login page, an API client gets 401."""


class Forbidden(Exception):
    """A post without the session's CSRF token (forged, or from a page older than the session)."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in person. `person` is their staff entry (None: not listed, so no limits)."""

    email: str
    via: Via
    csrf: str
    person: Person | None
    token: str | None = None  # the hash of the access token a token session was opened with

    @property
    def zone(self) -> str | None:
        return self.person.timezone if self.person is not None else None


class WebAuth:
    """The board's sign-in, made once per app from its settings."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.web_secret.get_secret_value() if settings.web_secret else secrets.token_hex(32)
        self._sessions = URLSafeTimedSerializer(secret, salt="sopflow-web-session")
        self._logins = URLSafeTimedSerializer(secret, salt="sopflow-web-login")
        self._staff_path = settings.staff_path()
        self._header = settings.web_proxy_header
        self._proxies = [
            ipaddress.ip_network(part.strip(), strict=False)
            for part in settings.web_trusted_proxies.split(",")
            if part.strip()
        ]
        self._dev_user = settings.web_dev_user.strip().lower() if settings.web_dev_user else None
        self.secure = settings.public_url.lower().startswith("https://")
        self._cache: tuple[float, Staff] | None = None

    # --- who is asking ------------------------------------------------------------------------------------------------

    def staff(self) -> Staff:
        """The staff directory, read again when the file changes (so `sopflow staff …` applies without a restart)."""
        path: Path = self._staff_path
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return Staff()
        if self._cache is None or self._cache[0] != mtime:
            self._cache = (mtime, load_staff(path))
        return self._cache[1]

    def viewer(self, request: Request) -> tuple[Viewer | None, bool]:
        """The signed-in person and whether their session cookie must be (re)set on the answer."""
        staff = self._directory()
        session = self._session(request)
        proxied = self._proxied(request)
        if proxied is not None:
            if session is not None and session.via == "proxy" and session.email == proxied:
                return session, False
            return Viewer(proxied, "proxy", secrets.token_urlsafe(24), staff.find(proxied)), True
        if session is not None and session.via == "token":
            person = staff.find(session.email)
            if person is not None and session.token in person.tokens:
                return Viewer(session.email, "token", session.csrf, person, session.token), False
        if self._dev_user is not None:
            if session is not None and session.via == "dev" and session.email == self._dev_user:
                return Viewer(session.email, "dev", session.csrf, staff.find(session.email)), False
            return Viewer(self._dev_user, "dev", secrets.token_urlsafe(24), staff.find(self._dev_user)), True
        return None, False

    def _directory(self) -> Staff:
        try:
            return self.staff()
        except StaffFileError as exc:  # a broken file signs no one in by token, and says why in the log
            log.error("%s", exc)
            return Staff()

    def _proxied(self, request: Request) -> str | None:
        """The proxy's header, only when the request comes from a trusted proxy address."""
        if not self._proxies or request.client is None:
            return None
        try:
            address = ipaddress.ip_address(request.client.host)
        except ValueError:
            return None
        if not any(address in network for network in self._proxies):
            return None
        values = request.headers.getlist(self._header)
        if len(values) != 1:
            return None
        try:
            return Person(email=values[0]).email
        except ValidationError:
            return None

    def _session(self, request: Request) -> Viewer | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._sessions.loads(raw, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("v") not in ("proxy", "token", "dev"):
            return None
        email, csrf, token = data.get("e"), data.get("c"), data.get("t")
        if not isinstance(email, str) or not isinstance(csrf, str):
            return None
        return Viewer(email, data["v"], csrf, None, token if isinstance(token, str) else None)

    # --- sessions ---------------------------------------------------------------------------------------------------

    def sign_in(self, token: str) -> Viewer | None:
        """The person holding an access token, as a new token session; None for a token no one holds."""
        person = self._directory().by_token(token)
        if person is None:
            return None
        return Viewer(person.email, "token", secrets.token_urlsafe(24), person, token_hash(token))

    def set_session(self, response: Response, viewer: Viewer) -> None:
        value = self._sessions.dumps({"e": viewer.email, "v": viewer.via, "c": viewer.csrf, "t": viewer.token})
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
        )

    def end_session(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)

    # --- forged posts -------------------------------------------------------------------------------------------------

    @staticmethod
    def check_csrf(viewer: Viewer, given: object) -> None:
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), viewer.csrf.encode()):
            raise Forbidden

    def login_form_token(self) -> str:
        return self._logins.dumps(secrets.token_urlsafe(8))

    def check_login_form(self, given: object) -> None:
        if not isinstance(given, str):
            raise Forbidden
        try:
            self._logins.loads(given, max_age=LOGIN_FORM_SECONDS)
        except BadSignature:
            raise Forbidden from None
