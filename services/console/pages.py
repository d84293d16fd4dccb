"""What every console page shares: who is asking, the page template, redirects, cookies.

One `Pages` per mounted console (services/console/app.py puts it on the app's state); each
page module's routes receive it as the `PagesDep` dependency.
"""
# No "from __future__ import annotations": FastAPI must see the parameter types.

from typing import Annotated, Any
from urllib.parse import unquote, urlencode

from fastapi import Depends, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import AfterValidator

from services.app.container import Container
from services.auth import Principal
from services.console.session import Forbidden, SignInNeeded, anonymous, check_csrf, visitor_of

# Rows on a list page.
PAGE_SIZE = 50
# A lead's or an account's id in a page's path, percent-encoded as one segment: the API's
# EncodedSegments middleware leaves `%` and `/` encoded in it for the route to decode here.
IdInPath = Annotated[str, Path(min_length=1, max_length=1536), AfterValidator(unquote)]


class Pages:
    def __init__(self, container: Container, prefix: str, templates: Jinja2Templates) -> None:
        self.container = container
        self.settings = container.settings
        self.sessions = container.sessions
        self.prefix = prefix
        self.templates = templates

    def set_cookie(self, response: Response, name: str, value: str, *, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.prefix,
            httponly=True,
            samesite="strict",
            secure=self.settings.console_secure_cookie,
        )

    async def user_of(self, request: Request) -> Principal:
        user = (await visitor_of(request, self.sessions)).user
        if user is None:
            raise SignInNeeded()
        return user

    async def admin_of(self, request: Request) -> Principal:
        user = await self.user_of(request)
        if not user.may("admin"):
            raise Forbidden("Only admins may do this. Your token has the viewer role.")
        return user

    async def posted(self, request: Request, *, admin: bool) -> tuple[Principal, Any]:
        """A form post: who sent it (admins only where `admin`), its fields, CSRF checked."""
        user = await self.admin_of(request) if admin else await self.user_of(request)
        form = await request.form(max_files=0, max_fields=20)
        offered = form.get("csrf")
        visitor = await visitor_of(request, self.sessions)
        check_csrf(visitor, offered if isinstance(offered, str) else None)
        return user, form

    def page(
        self,
        request: Request,
        name: str,
        user: Principal | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        return self.templates.TemplateResponse(
            request,
            name,
            {
                "user": user,
                "is_admin": user is not None and user.may("admin"),
                "csrf": anonymous(request, self.sessions).csrf,
                "open_console": anonymous(request, self.sessions).open_console,
                "notice": request.query_params.get("notice"),
                **context,
            },
            status_code=status,
        )

    def to(self, path: str, **params: Any) -> RedirectResponse:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return RedirectResponse(f"{self.prefix}{path}" + (f"?{query}" if query else ""), 303)

    def error_page(self, request: Request, status: int, title: str, detail: str) -> HTMLResponse:
        # The visitor as far as this request got (the database may be what failed).
        user = anonymous(request, self.sessions).user
        return self.page(request, "error.html", user, status, title=title, detail=detail)


def pages_of(request: Request) -> Pages:
    pages: Pages = request.app.state.pages
    return pages


PagesDep = Annotated[Pages, Depends(pages_of)]
