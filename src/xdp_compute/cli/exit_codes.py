"""The ``xdp`` exit codes: one table, and the one wrapper that turns failures into them.

Scripts branch on these numbers, so they are part of the CLI's interface: add codes, never
renumber. ``2`` is click's own code for a usage error; every other failure gets a code that
says which kind it is, so a denial, a spent budget and a gateway that is down are told apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import IntEnum
from typing import Any, TypeVar

import click
import typer

from xdp_compute import errors as E


class ExitCode(IntEnum):
    """What ``xdp`` exits with (README, "Exit codes")."""

    OK = 0
    FAILED = 1  # the job failed or aborted, a verification found a problem, an unexpected error
    USAGE = 2  # bad command line: unknown option, missing argument, no token given (click's code)
    AUTH = 3  # 401: unknown, expired or revoked token; 403: the role may not do this
    DENIED = 4  # a policy rule or a holder denied the job (nothing computed, nothing charged)
    BUDGET = 5  # a privacy budget (a node's ledger or the analyst's) has too little left
    UNREACHABLE = 6  # no answer from the gateway: refused, timed out (--timeout), TLS failure
    NOT_FOUND = 7  # 404: no such job, dataset, node or log entry
    INVALID = 8  # the gateway refused the request as invalid (SQL, parameters, size): 400, 413, 422
    CONFLICT = 9  # not now: no node online, idempotency key reused, schema conflict (409), 503


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the job failed or aborted, a verification found a problem, or an unexpected error",
    ExitCode.USAGE: "usage error: unknown option, missing argument or value, no token given",
    ExitCode.AUTH: "authentication or authorisation: token unknown, expired or revoked (401), role not allowed (403)",
    ExitCode.DENIED: "denied by a policy rule or by a holder; nothing was computed or charged",
    ExitCode.BUDGET: "privacy budget exhausted (a node's ledger or the analyst's)",
    ExitCode.UNREACHABLE: "gateway unreachable or too slow: connection refused, --timeout passed, TLS failure",
    ExitCode.NOT_FOUND: "not found: no such job, dataset, node or entry (404)",
    ExitCode.INVALID: "the gateway refused the request as invalid: SQL, parameters, size (400, 413, 422)",
    ExitCode.CONFLICT: "cannot be done now: no node online, idempotency key reused, conflict (409, 503)",
}


class UsageProblem(E.BadRequest):
    """A command line that cannot run (e.g. no token anywhere): exits ``USAGE`` with one line."""

    slug, title = "usage", "Usage error"


class WaitTimedOut(E.XdpError):
    """``--timeout`` passed while a job was still waiting at the gateway (it keeps waiting there)."""

    status, slug, title = 504, "wait-timed-out", "Timed out waiting for the job"


_TRANSPORT_CLASSES = {"GatewayUnreachable", "GatewayTimeout"}


def transport_failure(e: BaseException) -> bool:
    """Did the gateway not answer at all (refused, timed out, TLS)? Knows both SDK shapes: typed
    transport errors, and an error raised while an httpx transport error was being handled."""
    import httpx

    if any(k.__name__ in _TRANSPORT_CLASSES for k in type(e).__mro__):
        return True
    return isinstance(e.__context__, httpx.TransportError) or isinstance(e.__cause__, httpx.TransportError)


# Most specific first: PolicyDenied and BudgetExhausted are Forbidden subclasses.
_BY_CLASS: tuple[tuple[type[E.XdpError], ExitCode], ...] = (
    (UsageProblem, ExitCode.USAGE),
    (WaitTimedOut, ExitCode.UNREACHABLE),
    (E.BudgetExhausted, ExitCode.BUDGET),
    (E.PolicyDenied, ExitCode.DENIED),
    (E.Unauthorized, ExitCode.AUTH),
    (E.Forbidden, ExitCode.AUTH),
    (E.NotFound, ExitCode.NOT_FOUND),
    (E.ProtocolAborted, ExitCode.FAILED),
    (E.ProofError, ExitCode.FAILED),
    (E.SchemaConflict, ExitCode.CONFLICT),
    (E.Conflict, ExitCode.CONFLICT),
    (E.PayloadTooLarge, ExitCode.INVALID),
    (E.BadRequest, ExitCode.INVALID),
)
_BY_STATUS = {400: ExitCode.INVALID, 401: ExitCode.AUTH, 403: ExitCode.AUTH, 404: ExitCode.NOT_FOUND,
              409: ExitCode.CONFLICT, 413: ExitCode.INVALID, 422: ExitCode.INVALID, 503: ExitCode.CONFLICT}


def exit_code_for(e: BaseException) -> ExitCode:
    """The exit code of a failure (``FAILED`` for anything this table does not name)."""
    if transport_failure(e):
        return ExitCode.UNREACHABLE
    if isinstance(e, ValueError) and isinstance(e, E.XdpError):
        return ExitCode.INVALID  # the SDK refused an argument before sending anything
    for cls, code in _BY_CLASS:
        if isinstance(e, cls):
            return code
    status = getattr(e, "status", None)
    return _BY_STATUS.get(status, ExitCode.FAILED) if isinstance(status, int) else ExitCode.FAILED


F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn every failure into one ``error: ...`` line on stderr and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException, click.exceptions.Exit, click.ClickException):
            raise  # typer vendors click: its exits and usage errors are its own classes
        except E.XdpError as e:
            typer.echo(f"error: {_one_line(e.detail)}", err=True)
            raise typer.Exit(exit_code_for(e)) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except OSError as e:  # a token, CA or manifest file that cannot be read, a full disk ...
            typer.echo(f"error: {_one_line(str(e))}", err=True)
            raise typer.Exit(ExitCode.FAILED) from None
        except Exception as e:  # noqa: BLE001 - a bug: still one line, naming the exception's type
            typer.echo(f"error: unexpected {type(e).__name__}: {_one_line(str(e))}", err=True)
            raise typer.Exit(ExitCode.FAILED) from None

    return wrapper  # type: ignore[return-value]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
