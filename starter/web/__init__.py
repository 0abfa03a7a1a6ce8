"""The web board (issue 16): the staff's board, their work, each deal, its forms and charts, behind sign-in.

Served by the intake's FastAPI app (`starter.webhooks.create_app` calls `install`), so `sopflow intake` and
`sopflow dev` serve it beside the webhooks with the same Temporal client and records store. The pages are in
`starter.web.pages`, sign-in in `starter.web.auth`, the markup in `templates/_web/`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response

from sopflow.config import Settings
from starter.intake.form_pages import prefers_html
from starter.web import pages
from starter.web.auth import Forbidden, SignInRequired, WebAuth

# The board's own paths: only these are signed in (the webhooks and mailed form links have their own proofs).
_PATHS = ("/board", "/work", "/deals/", "/charts", "/login", "/logout")


def _is_board(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p if p.endswith("/") else p + "/") for p in _PATHS)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the board's pages, its sign-in and its error pages to an app."""
    auth = WebAuth(settings)
    app.state.web_auth = auth

    async def sign_in(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not _is_board(request.url.path):
            return await call_next(request)
        viewer, fresh = auth.viewer(request)
        request.state.viewer = viewer
        response = await call_next(request)
        if viewer is not None and fresh:
            auth.set_session(response, viewer)
        return response

    async def sign_in_first(request: Request, _exc: SignInRequired) -> Response:
        if request.method == "GET" and prefers_html(request.headers.get("accept")):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={pages.quote(target, safe='')}", status_code=303)
        return JSONResponse({"error": "sign in first"}, status_code=401)

    async def forged(request: Request, _exc: Forbidden) -> Response:
        return pages.error_page(
            request,
            pages.WebError(
                403,
                "This action was refused",
                "The page it came from has expired or was not one of sopflow's own: reload the page and try again.",
                back=request.url.path.rsplit("/tasks/", 1)[0].rsplit("/forms/", 1)[0] or "/board",
            ),
        )

    async def web_error(request: Request, exc: pages.WebError) -> Response:
        return pages.error_page(request, exc)

    async def unreadable(request: Request, exc: RequestValidationError) -> Response:
        """A query or path the page cannot take (an owner filter too long): a page for the board, FastAPI's JSON
        answer for the API."""
        if not _is_board(request.url.path):
            return await request_validation_exception_handler(request, exc)
        what = ", ".join(str(error["loc"][-1]) for error in exc.errors()) or "the request"
        return pages.error_page(request, pages.WebError(400, "The page could not be read", f"Check {what}.", "/board"))

    app.middleware("http")(sign_in)
    app.exception_handler(SignInRequired)(sign_in_first)
    app.exception_handler(Forbidden)(forged)
    app.exception_handler(pages.WebError)(web_error)
    app.exception_handler(RequestValidationError)(unreadable)
    app.include_router(pages.router)
