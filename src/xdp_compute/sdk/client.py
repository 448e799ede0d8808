"""The Python SDK: ``Client`` and ``AsyncClient`` over httpx, on one description of every call.

httpx's ``_client.py`` shape: ``BaseClient`` builds requests and reads answers; ``Client`` and
``AsyncClient`` only do I/O. Each API call is described once, as an ``endpoint`` that returns a
``Call`` (one request) or a flow (a generator yielding ``Call``s and ``Pause``s, e.g. a query
that waits for approval); ``Client`` runs it blocking, ``AsyncClient`` awaits it. Answers are
read into the typed records of ``xdp_compute.contract.api``, the same the gateway declares.

Arguments are checked before anything is sent (``InvalidArgument``); a gateway that cannot be
reached raises ``GatewayUnreachable`` (``GatewayTimeout`` when it stops answering); every error
answer raises the ``XdpError`` subclass its problem ``type`` names, with ``.problem`` as sent.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload
from urllib.parse import quote

import httpx

from xdp_compute import errors as E
from xdp_compute.contract import api as A
from xdp_compute.sdk import _args
from xdp_compute.sdk._tls import token_from_env, verify_for
from xdp_compute.sdk.results import QueryResult, query_result

_BY_SLUG: dict[str, type[E.XdpError]] = {}
for _cls in list(vars(E).values()):
    if isinstance(_cls, type) and issubclass(_cls, E.XdpError):
        _BY_SLUG.setdefault(_cls.slug, _cls)
_BY_STATUS: dict[int, type[E.XdpError]] = {400: E.BadRequest, 401: E.Unauthorized, 403: E.Forbidden,
                                           404: E.NotFound, 409: E.Conflict, 413: E.PayloadTooLarge,
                                           422: E.BadRequest, 503: E.ProtocolAborted}
DEFAULT_TIMEOUT = 120.0
POLL_SECONDS = 0.25
T = TypeVar("T")
P = ParamSpec("P")


class ApiError(E.XdpError):
    """An error answer from the gateway that maps to no more specific class."""


def raise_for_problem(resp: httpx.Response) -> None:
    """Raise the typed XdpError subclass for an RFC 9457 problem answer; ``.problem`` is its body."""
    if resp.status_code < 400:
        return
    try:
        problem = resp.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"status": resp.status_code, "detail": resp.text[:500] or resp.reason_phrase}
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    cls = _BY_SLUG.get(slug) or _BY_STATUS.get(resp.status_code) or ApiError
    err = cls(str(problem.get("detail") or problem.get("title") or resp.reason_phrase))
    err.status = resp.status_code
    err.problem = problem
    raise err


# ---------------------------------------------------------------------- call descriptions
@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer's JSON body."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    json: Any = None


@dataclass(frozen=True)
class Pause:
    """A flow waits this long before its next call (polling a job)."""

    seconds: float


@dataclass(frozen=True)
class SyncOnly(Generic[T]):
    """A step only the blocking client runs (e.g. Paillier decryption of an encrypted answer)."""

    run: Callable[[Client], T]
    what: str


Flow = Generator[Call[Any] | Pause | SyncOnly[Any], Any, T]


class endpoint(Generic[P, T]):
    """Decorate a ``BaseClient`` method that describes a call; ``Client`` runs it, ``AsyncClient`` awaits it."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T] | Flow[T]]) -> None:
        self.build = build
        functools.update_wrapper(self, build)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type) -> endpoint[P, T]: ...
    @overload
    def __get__(self, obj: Client, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __get__(self, obj: BaseClient, owner: type) -> Callable[P, Any]: ...

    def __get__(self, obj: BaseClient | None, owner: type) -> Any:
        if obj is None:
            return self
        build = self.build

        @functools.wraps(build)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return obj._run(build(obj, *args, **kwargs))

        return bound


def _list_of(model: type[A.ApiModel]) -> Callable[[Any], list[Any]]:
    def parse(data: Any) -> list[Any]:
        return [model.model_validate(x) for x in data]

    return parse


def _seg(value: str) -> str:
    """A path segment: a name or an id, escaped so it stays one segment."""
    return quote(_args.text("path segment", value, max_len=200), safe="")


def _params(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _delivery_or_accepted(data: Any) -> A.Delivery | A.Accepted:
    return A.Delivery.model_validate(data) if data.get("status") == "released" else A.Accepted.model_validate(data)


# ---------------------------------------------------------------------- the shared client
class BaseClient:
    """Builds requests and reads answers for one principal; ``Client``/``AsyncClient`` do the I/O."""

    def __init__(self, url: str | list[str], token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 key_dir: str | None = None, ca: str | None = None, injected_transport: bool = False) -> None:
        """``url``: the gateway's REST URL, or several replicas' (a list or comma-separated);
        ``token``: default ``XDP_TOKEN`` / ``XDP_TOKEN_FILE``; ``ca``: the deployment's CA certificate
        (default ``XDP_CA``) that the gateway's https:// certificate must chain to."""
        # Gateway replicas (issue #18): several URLs, comma-separated or a list; calls go to one
        # and move on to the next when it cannot be reached (``_fail_over``).
        given = ",".join(url) if isinstance(url, list | tuple) else url
        self.urls = [u.strip().rstrip("/") for u in _args.text("url", given, max_len=2000).split(",") if u.strip()]
        if not self.urls:
            raise E.InvalidArgument("url: no gateway URL given")
        self.url = self.urls[0]
        self.key_dir = key_dir
        self.timeout = _args.positive("timeout", timeout)
        verify = [verify_for(u, ca, injected_transport) for u in self.urls]  # each URL checked alike
        self._verify = verify[0]
        self._headers = {"authorization": f"Bearer {token or token_from_env()}"}

    @classmethod
    def from_env(cls, **kwargs: Any) -> Self:
        """A client for ``XDP_URL`` with the token of ``XDP_TOKEN`` / ``XDP_TOKEN_FILE`` and the CA of ``XDP_CA``."""
        url = os.environ.get("XDP_URL", "").strip()
        if not url:
            raise E.InvalidArgument("XDP_URL is not set: the gateway's URL, e.g. https://gateway.example:8000")
        return cls(url, **kwargs)

    # -------------------------------------------------------------- reading answers
    def _read(self, call: Call[T], resp: httpx.Response) -> T:
        raise_for_problem(resp)
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            raise ApiError(f"the gateway answered {resp.status_code} with a body that is not JSON") from None
        try:
            return call.parse(data)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ApiError(f"the gateway's answer to {call.method} {call.path} is not what this SDK reads: "
                           f"{str(e).splitlines()[0]}") from None

    def _unreachable(self, e: httpx.TransportError) -> E.XdpError:
        if isinstance(e, httpx.TimeoutException):
            return E.GatewayTimeout(f"the gateway at {self.url} did not answer within {self.timeout:g}s "
                                    f"({type(e).__name__}); the request may still run: retry with the same "
                                    "idempotency_key", url=self.url)
        hint = (" (is --ca / XDP_CA the deployment's CA certificate?)"
                if "CERTIFICATE_VERIFY_FAILED" in str(e) else "")
        return E.GatewayUnreachable(f"cannot reach the gateway at {self.url}: {e or type(e).__name__}{hint}",
                                    url=self.url)

    def _fail_over(self, call: Call[Any], e: httpx.TransportError, tried: int) -> bool:
        """After a transport error: switch to the next replica's URL and return True when the call
        may be sent again there — the request never reached a gateway (connect failed), or it is
        safe to repeat (a GET, or a body with an ``idempotency_key``: the replica that answers it
        finds the job the first one made). False: no other URL left, or the request may have run."""
        if tried >= len(self.urls):
            return False
        unsent = isinstance(e, httpx.ConnectError | httpx.ConnectTimeout)
        repeatable = call.method == "GET" or (isinstance(call.json, dict) and bool(call.json.get("idempotency_key")))
        if not (unsent or repeatable):
            return False
        self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
        self._http.base_url = self.url  # type: ignore[attr-defined]
        return True

    def _run(self, step: Call[Any] | Flow[Any]) -> Any:
        raise NotImplementedError

    # -------------------------------------------------------------- catalog and nodes
    @endpoint
    def me(self) -> Call[A.Me]:
        """Who the token belongs to: id, name, role, region."""
        return Call("GET", "/v1/me", A.Me.model_validate)

    @endpoint
    def datasets(self) -> Call[list[A.Dataset]]:
        """Catalog: datasets with nodes, columns, classification and policy (no data-derived figures)."""
        return Call("GET", "/v1/datasets", _list_of(A.Dataset))

    @endpoint
    def dataset(self, name: str) -> Call[A.Dataset]:
        return Call("GET", f"/v1/datasets/{_seg(name)}", A.Dataset.model_validate)

    @endpoint
    def mock(self, name: str, rows: int = 10) -> Call[list[dict[str, Any]]]:
        """Synthetic rows drawn from the dataset's declared metadata alone."""
        return Call("GET", f"/v1/datasets/{_seg(name)}/mock", lambda d: A.MockPreview.model_validate(d).rows,
                    params={"rows": _args.count("rows", rows, low=1, high=1000)})

    @endpoint
    def nodes(self) -> Call[list[A.Node]]:
        return Call("GET", "/v1/nodes", _list_of(A.Node))

    @endpoint
    def node(self, node: str) -> Call[A.Node]:
        return Call("GET", f"/v1/nodes/{_seg(node)}", A.Node.model_validate)

    @endpoint
    def validate_node(self, node: str) -> Call[A.NodeValidation]:
        """Holders: ask one's own node to check its sources against its manifest (counts only)."""
        return Call("POST", f"/v1/nodes/{_seg(node)}/validate", A.NodeValidation.model_validate)

    # -------------------------------------------------------------- dataset owners
    @endpoint
    def invite(self, dataset: str, holder: str) -> Call[A.MemberChange]:
        """Owners: let the holder named ``holder`` add its nodes' rows to ``dataset``."""
        return Call("POST", f"/v1/datasets/{_seg(dataset)}/members", A.MemberChange.model_validate,
                    json={"holder": _args.text("holder", holder, max_len=200)})

    @endpoint
    def members(self, dataset: str) -> Call[list[A.Member]]:
        """The invited holders of ``dataset`` (owner and members may ask; the owner is ``dataset().owner``)."""
        return Call("GET", f"/v1/datasets/{_seg(dataset)}/members", lambda d: A.Membership.model_validate(d).members)

    @endpoint
    def revoke(self, dataset: str, holder: str) -> Call[A.MemberChange]:
        """Owners: remove a member; its nodes take part in no further job on ``dataset``."""
        return Call("DELETE", f"/v1/datasets/{_seg(dataset)}/members/{_seg(holder)}", A.MemberChange.model_validate)

    # -------------------------------------------------------------- analysts
    @endpoint
    def query(self, sql: str, epsilon: float, delta: float | None = None, dry_run: bool = False,
              idempotency_key: str | None = None, *, level: float = 0.95, encrypt: bool = False,
              wait: float = 600.0, subscription: str | None = None) -> Flow[QueryResult | A.DryRun]:
        """Run a federated DP SQL query; returns a QueryResult (the plan, a ``DryRun``, when ``dry_run``).

        Waits up to ``wait`` seconds for a job that needs its holders' approval. ``encrypt=True``
        asks for Paillier encrypted delivery that only this client can decrypt (``Client`` only).
        """
        body = _args.query_body(sql, epsilon, delta, dry_run, idempotency_key, level)
        wait = _args.positive("wait", wait)
        if subscription is not None:  # data exchange (issue #17): run under an approved subscription
            if encrypt:
                raise E.InvalidArgument("a query under a subscription is offered with plain delivery only")
            body["subscription"] = _args.text("subscription", subscription, max_len=64)
        if not encrypt:
            from xdp_compute.sdk.join import reads_two_datasets

            # A private join's answer is always delivered encrypted under this client's key (issue #16).
            encrypt = reads_two_datasets(sql)
        if encrypt:
            from xdp_compute.sdk.he import encrypted_query

            decrypted: QueryResult | A.DryRun = yield SyncOnly(
                lambda c: encrypted_query(c, sql, epsilon, delta, idempotency_key=idempotency_key, level=level,
                                          wait=wait, dry_run=dry_run), "encrypted delivery (encrypt=True)")
            return decrypted
        out = yield Call("POST", "/v1/queries", lambda d: d, json=body)
        if dry_run:
            return A.DryRun.model_validate(out)
        job = yield from self._wait_flow(out, wait)
        return query_result(job)

    @endpoint
    def submit_query(self, sql: str, epsilon: float, delta: float | None = None,
                     idempotency_key: str | None = None, *, level: float = 0.95,
                     subscription: str | None = None) -> Call[A.Delivery | A.Accepted]:
        """Submit; a job that needs approval answers at once (``Accepted``: job_id, status)."""
        body = _args.query_body(sql, epsilon, delta, False, idempotency_key, level)
        if subscription is not None:  # data exchange (issue #17)
            body["subscription"] = _args.text("subscription", subscription, max_len=64)
        return Call("POST", "/v1/queries", _delivery_or_accepted, json=body)

    @endpoint
    def result(self, job_id: str, wait: float = 600.0) -> Flow[QueryResult]:
        """Wait for a submitted query's release and return it."""
        wait = _args.positive("wait", wait)
        out = yield Call("GET", f"/v1/jobs/{_seg(job_id)}", lambda d: d)
        return query_result((yield from self._wait_flow(out, wait)))

    def _wait_flow(self, out: dict[str, Any], timeout: float) -> Flow[dict[str, Any]]:
        """Poll a job that waits (e.g. for approval) until it is released, denied or failed."""
        deadline = time.monotonic() + timeout
        while out.get("status") not in ("released", "denied", "failed"):
            if time.monotonic() > deadline:
                raise E.Conflict(f"job {out.get('job_id')} still {out.get('status')} after {timeout:g}s",
                                 job_id=out.get("job_id"))
            yield Pause(POLL_SECONDS)
            out = yield Call("GET", f"/v1/jobs/{_seg(out['job_id'])}", lambda d: d)
        if out["status"] != "released":
            err = out.get("error") or {}
            cls = E.PolicyDenied if out["status"] == "denied" else E.ProtocolAborted
            raise cls(f"job {out['job_id']} {out['status']}: {err.get('detail', '')}", job_id=out["job_id"])
        return out

    @endpoint
    def job(self, job_id: str) -> Call[A.Job]:
        """A job's status and, once released, its delivery with a fresh receipt (own jobs only)."""
        return Call("GET", f"/v1/jobs/{_seg(job_id)}", A.Job.model_validate)

    @endpoint
    def jobs(self, status: str | None = None, kind: str | None = None, limit: int = 50,
             before: str | None = None) -> Call[A.JobPage]:
        """The caller's own jobs, newest first; pass ``page.next_before`` as ``before`` for the next page."""
        if status is not None and status not in A.JOB_STATUSES:
            raise E.InvalidArgument(f"status must be one of {', '.join(A.JOB_STATUSES)}, not {status!r}")
        return Call("GET", "/v1/jobs", A.JobPage.model_validate,
                    params=_params(status=status, kind=kind, limit=_args.count("limit", limit, low=1, high=500),
                                   before=before))

    @endpoint
    def budget(self, dataset: str) -> Call[A.Budget]:
        """Budget left per node of ``dataset`` and the analyst's own."""
        return Call("GET", f"/v1/budget/{_seg(dataset)}", A.Budget.model_validate)

    # -------------------------------------------------------------- holders
    @endpoint
    def approvals(self) -> Call[list[A.Approval]]:
        """Holders: jobs on your datasets awaiting (or past) your decision."""
        return Call("GET", "/v1/approvals", _list_of(A.Approval))

    @endpoint
    def approve(self, job_id: str, reason: str | None = None) -> Call[A.ApprovalDecision]:
        body = None if reason is None else {"reason": _args.text("reason", reason, max_len=2000)}
        return Call("POST", f"/v1/approvals/{_seg(job_id)}/approve", A.ApprovalDecision.model_validate, json=body)

    @endpoint
    def deny(self, job_id: str, reason: str) -> Call[A.ApprovalDecision]:
        return Call("POST", f"/v1/approvals/{_seg(job_id)}/deny", A.ApprovalDecision.model_validate,
                    json={"reason": _args.text("reason", reason, max_len=2000)})

    # -------------------------------------------------------------- release log and metering
    @endpoint
    def public_key(self) -> Call[str]:
        """The hex Ed25519 key that signs the release log's tree heads."""
        return Call("GET", "/v1/audit/public-key", lambda d: A.PublicKey.model_validate(d).public_key)

    @endpoint
    def log_head(self) -> Call[A.LogHead]:
        """Auditors: the latest signed tree head and any integrity problem the gateway found."""
        return Call("GET", "/v1/audit/head", A.LogHead.model_validate)

    @endpoint
    def audit_entries(self, dataset: str | None = None, principal: str | None = None, kind: str | None = None,
                      since: float | None = None, until: float | None = None, start: int = 0,
                      limit: int = 1000) -> Call[list[A.LogEntry]]:
        """Auditors: release-log entries (digests, costs and decisions, never values), filtered."""
        return Call("GET", "/v1/audit/entries", _list_of(A.LogEntry),
                    params=_params(dataset=dataset, principal=principal, kind=kind,
                                   since=None if since is None else _args.real("since", since),
                                   until=None if until is None else _args.real("until", until),
                                   start=_args.count("start", start, low=0, high=2**62),
                                   limit=_args.count("limit", limit, low=1, high=100_000)))

    @endpoint
    def metering(self) -> Call[A.Metering]:
        """Auditors (all) and holders (their datasets): jobs, epsilon spent, cells, compute seconds."""
        return Call("GET", "/v1/metering", A.Metering.model_validate)

    @endpoint
    def metering_series(self) -> Call[A.MeteringSeries]:
        """Auditors (all) and holders (their datasets): cumulative ε per release and entries by kind, over time."""
        return Call("GET", "/v1/metering/series", A.MeteringSeries.model_validate)

    # -------------------------------------------------------------- data exchange (issue #17)
    @endpoint
    def register_asset(self, dataset: str, description: str, licence: str, grade: str | None = None
                       ) -> Call[A.AssetVersion]:
        """Owners: register ``dataset`` as an asset (again after a change: version n+1). Each of the
        owner's nodes commits to its rows; the version is a release-log entry."""
        body = {"dataset": _args.text("dataset", dataset, max_len=64),
                "description": _args.text("description", description, max_len=4000),
                "licence": _args.text("licence", licence, max_len=4000)}
        if grade is not None:
            body["grade"] = _args.text("grade", grade, max_len=64)
        return Call("POST", "/v1/assets", A.AssetVersion.model_validate, json=body)

    @endpoint
    def assets(self) -> Call[list[A.AssetVersion]]:
        """The newest version of every registered asset."""
        return Call("GET", "/v1/assets", _list_of(A.AssetVersion))

    @endpoint
    def asset_history(self, dataset: str) -> Call[list[A.AssetVersion]]:
        """Every version of ``dataset``'s asset, oldest first (their release-log entries)."""
        return Call("GET", f"/v1/assets/{_seg(dataset)}/history", _list_of(A.AssetVersion))

    @endpoint
    def products(self, dataset: str | None = None, kind: str | None = None) -> Call[list[A.Product]]:
        """The product catalog, each product with the caller's own subscription if any."""
        return Call("GET", "/v1/products", _list_of(A.Product), params=_params(dataset=dataset, kind=kind))

    @endpoint
    def product(self, product: str) -> Call[A.Product]:
        return Call("GET", f"/v1/products/{_seg(product)}", A.Product.model_validate)

    @endpoint
    def create_product(self, dataset: str, kind: str, title: str, unit_price: float, allowance: float, *,
                       description: str | None = None, shapes: dict[str, list[str]] | None = None,
                       columns: list[str] | None = None) -> Call[A.Product]:
        """Owners: list a product on ``dataset`` — ``query`` (``shapes``: aggregates, group_by, filters,
        columns; allowance in epsilon), ``lookup`` (``columns``; allowance in calls), ``scoring``, ``model``."""
        if kind not in ("query", "scoring", "model", "lookup"):
            raise E.InvalidArgument(f"kind must be query, scoring, model or lookup, not {kind!r}")
        body: dict[str, Any] = {"dataset": _args.text("dataset", dataset, max_len=64), "kind": kind,
                                "title": _args.text("title", title, max_len=200),
                                "unit_price": _args.real("unit_price", unit_price),
                                "allowance": _args.positive("allowance", allowance)}
        if description is not None:
            body["description"] = _args.text("description", description, max_len=4000)
        if shapes is not None:
            body["shapes"] = shapes
        if columns is not None:
            body["columns"] = list(columns)
        return Call("POST", "/v1/products", A.Product.model_validate, json=body)

    @endpoint
    def subscribe(self, product: str) -> Call[A.SubscriptionRecord]:
        """Analysts: ask for a subscription to ``product`` (pending until its owner approves)."""
        return Call("POST", f"/v1/products/{_seg(product)}/subscribe", A.SubscriptionRecord.model_validate)

    @endpoint
    def subscriptions(self) -> Call[list[A.SubscriptionRecord]]:
        """Analysts: their own; holders: those to their products; auditors and admins: all."""
        return Call("GET", "/v1/subscriptions", _list_of(A.SubscriptionRecord))

    @endpoint
    def approve_subscription(self, subscription: str, reason: str | None = None) -> Call[A.SubscriptionRecord]:
        """Owners: approve a pending subscription to one of their products."""
        body = None if reason is None else {"reason": _args.text("reason", reason, max_len=2000)}
        return Call("POST", f"/v1/subscriptions/{_seg(subscription)}/approve", A.SubscriptionRecord.model_validate,
                    json=body)

    @endpoint
    def reject_subscription(self, subscription: str, reason: str) -> Call[A.SubscriptionRecord]:
        """Owners: reject a pending subscription, saying why."""
        return Call("POST", f"/v1/subscriptions/{_seg(subscription)}/reject", A.SubscriptionRecord.model_validate,
                    json={"reason": _args.text("reason", reason, max_len=2000)})

    @endpoint
    def statements(self, period: str) -> Call[list[A.Statement]]:
        """The billing period's (``YYYY-MM``) statements the caller may see: settled ones are
        release-log entries (``issued``); before settlement they are computed on the fly."""
        return Call("GET", "/v1/statements", _list_of(A.Statement),
                    params={"period": _args.text("period", period, max_len=7)})

    @endpoint
    def settle(self, period: str) -> Call[list[A.Statement]]:
        """Admins: settle a billing period; each statement becomes a release-log entry."""
        return Call("POST", "/v1/statements", _list_of(A.Statement),
                    json={"period": _args.text("period", period, max_len=7)})


# ---------------------------------------------------------------------- blocking I/O
class Client(BaseClient):
    """Talk to a gateway as one principal, blocking. Every method raises a typed ``XdpError`` on failure."""

    def __init__(self, url: str | list[str], token: str | None = None, *,
                 transport: httpx.BaseTransport | None = None, timeout: float = DEFAULT_TIMEOUT,
                 key_dir: str | None = None, ca: str | None = None) -> None:
        super().__init__(url, token, timeout=timeout, key_dir=key_dir, ca=ca, injected_transport=transport is not None)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, transport=transport, timeout=timeout,
                                  verify=self._verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        return self._read(call, self._response(call))

    def _response(self, call: Call[Any]) -> httpx.Response:
        """The raw answer to ``call``, from the first replica that can be reached (``_fail_over``)."""
        tried = 1
        while True:
            try:
                return self._http.request(call.method, call.path, params=call.params, json=call.json)
            except httpx.TransportError as e:
                if not self._fail_over(call, e, tried):
                    raise self._unreachable(e) from None
                tried += 1

    def _run(self, step: Call[Any] | Flow[Any]) -> Any:
        if isinstance(step, Call):
            return self._send(step)
        try:
            item = next(step)
            while True:
                if isinstance(item, Pause):
                    time.sleep(item.seconds)
                    item = step.send(None)
                elif isinstance(item, SyncOnly):
                    result = item.run(self)
                    step.close()
                    return result
                else:
                    item = step.send(self._send(item))
        except StopIteration as done:
            return done.value

    # Raw JSON for the SDK's own helpers (he, scoring, audit) that read undeclared detail.
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(Call(method, path, lambda d: d, params=kw.get("params"), json=kw.get("json")))

    def _get(self, path: str, **kw: Any) -> Any:
        return self._request("GET", path, **kw)

    def _post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self._request("POST", path, json=json, **kw)

    def _wait(self, out: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self._run(self._wait_flow(out, timeout))  # type: ignore[no-any-return]

    # -------------------------------------------------------------- blocking-only helpers
    def score(self, dataset: str, features: list[str], weights: list[float], bias: float = 0.0,
              where: str | None = None, group_by: list[str] | None = None, *, epsilon: float,
              delta: float | None = None, level: float = 0.95, idempotency_key: str | None = None,
              wait: float = 600.0, subscription: str | None = None) -> QueryResult:
        """The mean of w.x + bias per group over the holders' rows; the weights never leave here.

        The gateway releases DP per-group counts and feature sums (``POST /v1/scores``, charged
        like any query); the score and its interval are computed locally from them.
        ``rows`` hold ``score`` (mean) and ``n`` (noisy group size) per group.
        ``subscription``: run under an approved subscription to a scoring product (issue #17),
        metered per row of the plan's declared size (the receipt's ``subscription`` says how many).
        """
        from xdp_compute.sdk.scoring import linear_score

        _args.query_body("SELECT 1", epsilon, delta, False, idempotency_key, level)
        sub = None if subscription is None else _args.text("subscription", subscription, max_len=64)
        return linear_score(self, dataset, features, weights, bias, where, group_by, epsilon, delta, level,
                            idempotency_key, wait, subscription=sub)

    def train(self, dataset: str, model: str = "logreg", features: list[str] | None = None, label: str = "",
              rounds: int = 10, local_epochs: int = 1, batch_size: int = 64, lr: float | None = None,
              target_epsilon: float = 3.0, delta: float | None = None, max_grad_norm: float | None = None,
              where: str | None = None, hidden: list[int] | None = None,
              idempotency_key: str | None = None, subscription: str | None = None) -> Any:
        """Start DP federated training of a vetted model; returns a TrainingJob (``.wait()``, ``.model()``).

        ``subscription``: run under an approved subscription to a model product (issue #17); one
        training is one unit, metered when the model is released."""
        from xdp_compute.sdk.training import TrainingJob

        body = {"dataset": dataset, "model": model, "features": list(features or []), "label": label,
                "rounds": rounds, "local_epochs": local_epochs, "batch_size": batch_size, "lr": lr,
                "target_epsilon": _args.epsilon(target_epsilon, "target_epsilon"),
                "delta": None if delta is None else _args.delta(delta), "max_grad_norm": max_grad_norm,
                "where": where, "hidden": hidden, "idempotency_key": idempotency_key}
        if subscription is not None:  # data exchange (issue #17)
            body["subscription"] = _args.text("subscription", subscription, max_len=64)
        out = self._post("/v1/trainings", json=body)
        return TrainingJob(self, out["job_id"])

    def verify_receipt(self, result: Any, public_key: str | None = None) -> bool:
        """Check a delivered result's receipt: its payload digest is the logged one, the entry is in
        the log (RFC 9162 inclusion proof) under a head signed by the log's key. Raises on failure."""
        import hashlib

        from xdp_compute.audit import SignedTreeHead, canonical_json, verify_receipt

        delivery = result.delivery if hasattr(result, "delivery") else result
        receipt = delivery.get("receipt")
        if not receipt:
            raise E.ProofError("this result carries no receipt")
        key = public_key or self.public_key()
        if receipt["public_key"] != key:
            raise E.ProofError("the receipt was signed by a key other than the log's published key")
        entry = receipt["entry"]
        payload = delivery["result"]
        if entry.get("payload_digest") != hashlib.sha256(canonical_json(payload)).hexdigest():
            raise E.ProofError("the delivered payload does not match the digest in the release log")
        return verify_receipt(entry, receipt["log_index"], receipt["tree_size"],
                              [bytes.fromhex(h) for h in receipt["inclusion_proof"]],
                              SignedTreeHead.from_dict(receipt["signed_tree_head"]), bytes.fromhex(key))

    # -------------------------------------------------------------- hidden lookups (issue #17)
    def lookup(self, product: str, key: str | int, columns: list[str] | None = None) -> Any:
        """Look up one record by ``key`` in a lookup product, hidden from the holder and the gateway.

        Returns a ``LookupResult``: ``found`` and ``record`` (the product's columns, or ``columns``),
        or ``found=False`` for a key the holder does not have. The key never leaves this process
        (an OPRF-blinded point does); the holder and the gateway learn neither the key nor whether
        it matched. Counts one call under your subscription and writes one release-log entry.
        Not differentially private: it releases one record (docs/hidden-lookup.md).
        """
        from xdp_compute.sdk.lookup import hidden_lookup

        return hidden_lookup(self, product, key, columns)


# ---------------------------------------------------------------------- asyncio I/O
class AsyncClient(BaseClient):
    """The same calls as ``Client``, awaited: ``async with AsyncClient(url, token) as c: await c.query(...)``."""

    def __init__(self, url: str | list[str], token: str | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = DEFAULT_TIMEOUT, key_dir: str | None = None, ca: str | None = None) -> None:
        super().__init__(url, token, timeout=timeout, key_dir=key_dir, ca=ca, injected_transport=transport is not None)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, transport=transport,
                                       timeout=timeout, verify=self._verify)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        tried = 1
        while True:
            try:
                resp = await self._http.request(call.method, call.path, params=call.params, json=call.json)
            except httpx.TransportError as e:
                if not self._fail_over(call, e, tried):
                    raise self._unreachable(e) from None
                tried += 1
                continue
            return self._read(call, resp)

    def _run(self, step: Call[Any] | Flow[Any]) -> Awaitable[Any]:
        return self._drive(step)

    async def _drive(self, step: Call[Any] | Flow[Any]) -> Any:
        if isinstance(step, Call):
            return await self._send(step)
        try:
            item = next(step)
            while True:
                if isinstance(item, Pause):
                    await asyncio.sleep(item.seconds)
                    item = step.send(None)
                elif isinstance(item, SyncOnly):
                    step.close()
                    raise E.InvalidArgument(f"{item.what} is offered on the blocking Client only")
                else:
                    item = step.send(await self._send(item))
        except StopIteration as done:
            return done.value
