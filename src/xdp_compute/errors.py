"""One error base for the whole project.

Every failure a user can cause or meet is an ``XdpError`` subclass. The REST layer maps it to
RFC 9457 problem+json (``type``, ``title``, ``status``, ``detail`` plus ``extra`` members); the
CLI prints ``detail`` and exits non-zero; library code never calls ``sys.exit``.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://xdp-compute.dev/problems/"


class Problem(dict[str, Any]):
    """An error's RFC 9457 members, read as a dict (``err.problem["detail"]``).

    Calling it, ``err.problem(instance=path)``, gives the body of one answer with ``instance`` set
    (the form the gateway's handlers use).
    """

    def __call__(self, instance: str | None = None) -> dict[str, Any]:
        return {**self, "instance": instance} if instance else dict(self)


class XdpError(Exception):
    """Base of every expected failure; carries what problem+json needs."""

    status: int = 500
    slug: str = "internal"
    title: str = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self._problem: dict[str, Any] | None = None

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    @property
    def problem(self) -> Problem:
        """The problem+json members: as the gateway answered them (SDK), else built from this error."""
        wire = getattr(self, "_problem", None)
        if wire is not None:
            return Problem(wire)
        body = Problem(type=self.type_uri, title=self.title, status=self.status, detail=self.detail)
        body.update(self.extra)
        return body

    @problem.setter
    def problem(self, body: dict[str, Any]) -> None:
        self._problem = dict(body)


class BadRequest(XdpError):
    status, slug, title = 400, "bad-request", "Bad request"


class InvalidQuery(BadRequest):
    slug, title = "invalid-query", "Query not supported"


class InvalidSpec(BadRequest):
    slug, title = "invalid-spec", "Invalid job specification"


class InvalidKey(BadRequest):
    slug, title = "invalid-key", "Invalid key"


class InvalidCiphertext(BadRequest):
    slug, title = "invalid-ciphertext", "Invalid ciphertext"


class ManifestError(BadRequest):
    slug, title = "invalid-manifest", "Invalid manifest"


class SchemaConflict(XdpError):
    status, slug, title = 409, "schema-conflict", "Dataset schema conflict"


class Unauthorized(XdpError):
    status, slug, title = 401, "unauthorized", "Authentication required"


class Forbidden(XdpError):
    status, slug, title = 403, "forbidden", "Forbidden"


class PolicyDenied(Forbidden):
    slug, title = "policy-denied", "Denied by policy"


class BudgetExhausted(Forbidden):
    slug, title = "budget-exhausted", "Privacy budget exhausted"


class NotFound(XdpError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(XdpError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(XdpError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class ProtocolAborted(XdpError):
    """A multi-party protocol could not finish (e.g. fewer than t survivors)."""

    status, slug, title = 503, "protocol-aborted", "Protocol aborted"


class InvalidArgument(BadRequest, ValueError):
    """An SDK call's argument is invalid; raised before anything is sent."""

    slug, title = "invalid-argument", "Invalid argument"


class GatewayUnreachable(XdpError):
    """The gateway could not be reached (refused, DNS, TLS): nothing was sent or nothing answered."""

    status, slug, title = 503, "gateway-unreachable", "Gateway unreachable"


class GatewayTimeout(GatewayUnreachable):
    """The gateway accepted the connection but did not answer in time; the request may have run."""

    status, slug, title = 504, "gateway-timeout", "Gateway timeout"


class WrongKey(XdpError):
    status, slug, title = 400, "wrong-key", "Wrong decryption key"


class ProofError(XdpError):
    status, slug, title = 400, "proof-invalid", "Proof does not verify"
