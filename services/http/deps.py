"""What the API's routes depend on, in one place: the running instance's `Container` and the
caller's role. Every router is a module-level `APIRouter` whose routes take these as
`Annotated` parameters, as the console's pages take `PagesDep`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Response

from services.app.container import Container
from services.auth import Principal, authenticate, authorize

log = logging.getLogger(__name__)


def container_of(request: Request) -> Container:
    """The instance this app serves (create_app puts it on the app's state)."""
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(container_of)]


class TokenIgnoredNotice:
    """A caller sent a token to a service that has none configured: the token proves
    nothing here (loopback is trusted as it is), and the caller probably meant another
    instance or forgot LEADSCORE_API_TOKENS. Said in a header on every such answer and
    once in the log."""

    TEXT = "no API tokens are configured here (LEADSCORE_API_TOKENS); the token was ignored"

    def __init__(self) -> None:
        self.logged = False

    def tell(self, response: Response) -> None:
        response.headers["Warning"] = f'299 leadscore "{self.TEXT}"'
        if not self.logged:
            self.logged = True
            log.warning("a request carried a bearer token, but %s", self.TEXT)


def role(needed: str) -> Callable[[Request, Response], Principal]:
    """A dependency that authenticates the caller and checks it may act as `needed`."""

    def dependency(request: Request, response: Response) -> Principal:
        tokens = container_of(request).tokens
        authorization = request.headers.get("authorization")
        if not tokens and authorization:
            notice: TokenIgnoredNotice = request.app.state.ignored_tokens
            notice.tell(response)
        principal = authenticate(
            tokens, authorization, request.client.host if request.client else None
        )
        return authorize(principal, needed)

    return dependency


Admin = Annotated[Principal, Depends(role("admin"))]
Viewer = Annotated[Principal, Depends(role("viewer"))]
Ingest = Annotated[Principal, Depends(role("ingest"))]
