"""xdp-compute: privacy-preserving computation — data usable but not visible.

The root exports the SDK's public names, resolved lazily (PEP 562): importing a core package such
as ``xdp_compute.crypto.shamir`` runs this file first, and it must not pull httpx in with it —
the core imports no transport (``../shared/CONVENTIONS.md``). ``from xdp_compute import Client``
loads the SDK on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xdp_compute.errors import (
        BadRequest,
        BudgetExhausted,
        Forbidden,
        GatewayTimeout,
        GatewayUnreachable,
        InvalidArgument,
        NotFound,
        PayloadTooLarge,
        PolicyDenied,
        Unauthorized,
        XdpError,
    )
    from xdp_compute.sdk.client import ApiError, AsyncClient, Client
    from xdp_compute.sdk.results import QueryResult

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "BudgetExhausted",
    "Client",
    "Forbidden",
    "GatewayTimeout",
    "GatewayUnreachable",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "PolicyDenied",
    "QueryResult",
    "Unauthorized",
    "XdpError",
]
__version__ = "0.1.0"

# Public name -> the module that defines it. Kept next to ``__all__`` so the two are read together;
# tests/test_architecture.py checks they name the same things.
_EXPORTS: dict[str, str] = {
    "ApiError": "xdp_compute.sdk.client",
    "AsyncClient": "xdp_compute.sdk.client",
    "BadRequest": "xdp_compute.errors",
    "BudgetExhausted": "xdp_compute.errors",
    "Client": "xdp_compute.sdk.client",
    "Forbidden": "xdp_compute.errors",
    "GatewayTimeout": "xdp_compute.errors",
    "GatewayUnreachable": "xdp_compute.errors",
    "InvalidArgument": "xdp_compute.errors",
    "NotFound": "xdp_compute.errors",
    "PayloadTooLarge": "xdp_compute.errors",
    "PolicyDenied": "xdp_compute.errors",
    "QueryResult": "xdp_compute.sdk.results",
    "Unauthorized": "xdp_compute.errors",
    "XdpError": "xdp_compute.errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once; later lookups bypass __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
