"""FastAPI dependencies: services, the current principal and role checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from xdp_compute.errors import Forbidden
from xdp_compute.gateway.app import Services
from xdp_compute.gateway.store import PrincipalView


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


Svc = Annotated[Services, Depends(get_services)]


def current_principal(request: Request, svc: Svc) -> PrincipalView:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return svc.store.authenticate(token)


CurrentPrincipal = Annotated[PrincipalView, Depends(current_principal)]


def require_role(*roles: str) -> Callable[[PrincipalView], PrincipalView]:
    def check(p: CurrentPrincipal) -> PrincipalView:
        if p.role not in roles:
            raise Forbidden(f"role {p.role!r} may not use this route (allowed: {', '.join(roles)})")
        return p

    return check


Analyst = Annotated[PrincipalView, Depends(require_role("analyst"))]
Holder = Annotated[PrincipalView, Depends(require_role("holder"))]
Auditor = Annotated[PrincipalView, Depends(require_role("auditor"))]
CatalogReader = Annotated[PrincipalView, Depends(require_role("analyst", "holder", "admin"))]
NodeReader = Annotated[PrincipalView, Depends(require_role("analyst", "holder", "admin"))]
