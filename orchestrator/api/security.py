"""Which role each route needs, as FastAPI dependencies: the one source of truth.

Every route declares one `Access`: `require(Role.SUBMITTER)` (admins always pass too),
`PUBLIC`, or `METRICS`. Use it as a parameter when the route needs the caller:

    def get_job(job_id: str, who: Annotated[Principal, Depends(require(Role.SUBMITTER))])

or as `dependencies=[Depends(require(Role.ADMIN))]` on the decorator when it does not.
`route_access(app)` reads them back; tests/integration/test_security_matrix.py checks that
every route has one and that docs/security.md lists each with the same roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from orchestrator.auth import OPEN_PRINCIPAL, Authenticator, Principal, Role
from orchestrator.errors import Forbidden

# auto_error=False: a missing or non-Bearer header is our 401 in the house format, not
# FastAPI's 403; the scheme still appears in the OpenAPI document.
_bearer = HTTPBearer(auto_error=False, description="An API token: `orchestrator tokens create`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.services.auth
    return auth


class Access:
    """A route's requirement: the roles that may call it (admin always may)."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset((*roles, Role.ADMIN))

    def describe(self) -> str:
        """As the role column of docs/security.md writes it."""
        return ", ".join(r.value for r in Role if r in self.roles)

    def check(self, principal: Principal) -> None:
        """Raises `Forbidden` unless the principal's role may call the route."""
        if principal.role not in self.roles:
            raise Forbidden(
                f"a {principal.role.value} token may not call this; it needs: {self.describe()}",
                role=principal.role.value,
                allowed=sorted(r.value for r in self.roles),
            )

    async def __call__(self, request: Request, credentials: Credentials) -> Principal:
        # On the event loop while the answer is in memory (nearly every request); on the
        # thread pool when it needs the store (a lookup, or a token's last use to record).
        # A sync dependency would cost every request a thread-pool round trip.
        auth = authenticator(request)
        bearer = credentials.credentials if credentials else None
        principal = auth.authenticate_cached(bearer, self.check)
        if principal is None:
            principal = await run_in_threadpool(auth.authenticate, bearer, self.check)
        return principal


class _Public(Access):
    """Open to anyone, token or not (probes, the dashboard's page and assets)."""

    def describe(self) -> str:
        return "open"

    async def __call__(self, request: Request, credentials: Credentials) -> Principal:
        return OPEN_PRINCIPAL


class _Metrics(Access):
    """Open, unless ORCH_METRICS_REQUIRE_TOKEN asks for a token of any role."""

    def __init__(self) -> None:
        super().__init__(Role.SUBMITTER, Role.WORKER)

    def describe(self) -> str:
        return "open, or any role with ORCH_METRICS_REQUIRE_TOKEN"

    async def __call__(self, request: Request, credentials: Credentials) -> Principal:
        if not request.app.state.services.settings.metrics_require_token:
            return OPEN_PRINCIPAL
        return await super().__call__(request, credentials)


PUBLIC: Access = _Public()
METRICS: Access = _Metrics()
_required: dict[frozenset[Role], Access] = {}


def require(*roles: Role) -> Access:
    """The dependency for a route that `roles` (and admin) may call; returns the caller."""
    access = Access(*roles)
    return _required.setdefault(access.roles, access)


# The usual combinations, named for the routers.
ADMIN = require()
SUBMITTER = require(Role.SUBMITTER)
ANY_ROLE = require(Role.SUBMITTER, Role.WORKER)
Admin = Annotated[Principal, Depends(ADMIN)]
Submitter = Annotated[Principal, Depends(SUBMITTER)]
AnyRole = Annotated[Principal, Depends(ANY_ROLE)]


def _accesses(dependant: Dependant) -> Iterator[Access]:
    for dep in dependant.dependencies:
        if isinstance(dep.call, Access):
            yield dep.call
        yield from _accesses(dep)


def _api_routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute with its full path, into included routers too (which this FastAPI
    keeps as wrappers around the original router)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            if getattr(context, "dependencies", None):
                raise AssertionError("declare access on each route, not on include_router")
            yield from _api_routes(included.routes, prefix + getattr(context, "prefix", ""))


def route_access(app: FastAPI) -> dict[tuple[str, str], Access | None]:
    """(method, path) → the route's `Access` (None: the route declares none, or several)."""
    found: dict[tuple[str, str], Access | None] = {}
    for path, route in _api_routes(app.routes):
        accesses = set(_accesses(route.dependant))
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            found[method, path] = accesses.pop() if len(accesses) == 1 else None
    return found
