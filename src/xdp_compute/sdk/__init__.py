"""The Python SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio) on one description of each call.

Answers are the typed records of ``xdp_compute.contract.api``; failures are ``XdpError``
subclasses: the gateway's problem ``type`` mapped to its class, ``InvalidArgument`` before
anything is sent, ``GatewayUnreachable`` / ``GatewayTimeout`` when the gateway does not answer.
"""

from __future__ import annotations

from xdp_compute.errors import GatewayTimeout, GatewayUnreachable, InvalidArgument, XdpError
from xdp_compute.sdk.client import ApiError, AsyncClient, Client
from xdp_compute.sdk.results import QueryResult

__all__ = ["ApiError", "AsyncClient", "Client", "GatewayTimeout", "GatewayUnreachable", "InvalidArgument",
           "QueryResult", "XdpError"]
