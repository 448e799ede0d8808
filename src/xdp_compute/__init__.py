"""xdp-compute: privacy-preserving computation — data usable but not visible."""

from xdp_compute.errors import (
    BadRequest,
    BudgetExhausted,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    Unauthorized,
    XdpError,
)
from xdp_compute.sdk.client import ApiError, Client
from xdp_compute.sdk.results import QueryResult

__all__ = [
    "ApiError",
    "BadRequest",
    "BudgetExhausted",
    "Client",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "PolicyDenied",
    "QueryResult",
    "Unauthorized",
    "XdpError",
]
__version__ = "0.1.0"
