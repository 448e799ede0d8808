"""The web console (issue #15): server-rendered pages for holders, analysts and auditors.

Mounted by the gateway under ``/console`` (``create_console``). Pages call the same functions the
REST routers call, as the signed-in principal, so a page shows nothing the API would not release
to that principal. Sign-in keeps the token server-side; see ``session``.
"""

from xdp_compute.gateway.console.app import create_console

__all__ = ["create_console"]
