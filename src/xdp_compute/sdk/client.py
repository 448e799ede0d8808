"""The Python SDK: ``Client(url, token)`` over httpx (transport injectable for tests)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

from xdp_compute import errors as E
from xdp_compute.sdk._tls import token_from_env, verify_for
from xdp_compute.sdk.results import QueryResult, query_result

_BY_SLUG: dict[str, type[E.XdpError]] = {}
for _cls in list(vars(E).values()):
    if isinstance(_cls, type) and issubclass(_cls, E.XdpError):
        _BY_SLUG.setdefault(_cls.slug, _cls)
_BY_STATUS: dict[int, type[E.XdpError]] = {400: E.BadRequest, 401: E.Unauthorized, 403: E.Forbidden,
                                           404: E.NotFound, 409: E.Conflict, 413: E.PayloadTooLarge,
                                           422: E.BadRequest}


class ApiError(E.XdpError):
    """An error answer from the gateway that maps to no more specific class."""


def raise_for_problem(resp: httpx.Response) -> None:
    """Raise the typed XdpError subclass for an RFC 9457 problem answer; carries ``.problem``."""
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
    err.problem = problem  # type: ignore[attr-defined]
    raise err


class Client:
    """Talk to a gateway as one principal. Every method raises a typed ``XdpError`` on failure."""

    def __init__(self, url: str, token: str | None = None, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = 120.0, key_dir: str | None = None, ca: str | None = None) -> None:
        """``token``: default ``XDP_TOKEN`` / ``XDP_TOKEN_FILE``; ``ca``: the deployment's CA certificate
        (default ``XDP_CA``) that the gateway's https:// certificate must chain to."""
        self.url = url.rstrip("/")
        self.key_dir = key_dir
        verify = verify_for(self.url, ca, transport is not None)
        self._http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token or token_from_env()}"},
                                  transport=transport, timeout=timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            hint = (" (is --ca / XDP_CA the deployment's CA certificate?)"
                    if "CERTIFICATE_VERIFY_FAILED" in str(e) else "")
            raise ApiError(f"cannot reach the gateway at {self.url}: {e}{hint}") from None
        raise_for_problem(resp)
        try:
            return resp.json() if resp.content else None
        except ValueError:
            raise ApiError(f"the gateway answered {resp.status_code} with a body that is not JSON") from None

    def _get(self, path: str, **kw: Any) -> Any:
        return self._request("GET", path, **kw)

    def _post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self._request("POST", path, json=json, **kw)

    # ------------------------------------------------------------------ catalog
    def me(self) -> dict[str, Any]:
        return self._get("/v1/me")  # type: ignore[no-any-return]

    def datasets(self) -> list[dict[str, Any]]:
        """Catalog: datasets with nodes, columns, classification and policy (no data-derived figures)."""
        return self._get("/v1/datasets")  # type: ignore[no-any-return]

    def dataset(self, name: str) -> dict[str, Any]:
        return self._get(f"/v1/datasets/{quote(name, safe='')}")  # type: ignore[no-any-return]

    def mock(self, name: str, rows: int = 10) -> list[dict[str, Any]]:
        """Synthetic rows drawn from the dataset's declared metadata alone."""
        return self._get(f"/v1/datasets/{quote(name, safe='')}/mock", params={"rows": rows})["rows"]  # type: ignore[no-any-return]

    def nodes(self) -> list[dict[str, Any]]:
        return self._get("/v1/nodes")  # type: ignore[no-any-return]

    def validate_node(self, node: str) -> dict[str, Any]:
        """Holders: ask one's own node to check its sources against its manifest (counts only)."""
        return self._post(f"/v1/nodes/{node}/validate")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ dataset owners
    def invite(self, dataset: str, holder: str) -> dict[str, Any]:
        """Owners: let the holder named ``holder`` add its nodes' rows to ``dataset``."""
        return self._post(f"/v1/datasets/{quote(dataset, safe='')}/members",  # type: ignore[no-any-return]
                          json={"holder": holder})

    def members(self, dataset: str) -> list[dict[str, Any]]:
        """The invited holders of ``dataset`` (owner and members may ask; the owner is ``dataset()['owner']``)."""
        return self._get(f"/v1/datasets/{quote(dataset, safe='')}/members")["members"]  # type: ignore[no-any-return]

    def revoke(self, dataset: str, holder: str) -> dict[str, Any]:
        """Owners: remove a member; its nodes take part in no further job on ``dataset``."""
        return self._request("DELETE", f"/v1/datasets/{quote(dataset, safe='')}/members/"  # type: ignore[no-any-return]
                                       f"{quote(holder, safe='')}")

    # ------------------------------------------------------------------ analysts
    def _wait(self, out: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Poll a job that waits (e.g. for approval) until it is released, denied or failed."""
        deadline = time.time() + timeout
        while out.get("status") not in ("released", "denied", "failed"):
            if time.time() > deadline:
                raise ApiError(f"job {out.get('job_id')} still {out.get('status')} after {timeout:g}s", job=out)
            time.sleep(0.25)
            out = self._get(f"/v1/jobs/{out['job_id']}")
        if out["status"] != "released":
            err = out.get("error") or {}
            cls = E.PolicyDenied if out["status"] == "denied" else E.ProtocolAborted
            raise cls(f"job {out['job_id']} {out['status']}: {err.get('detail', '')}", job_id=out["job_id"])
        return out

    def query(self, sql: str, epsilon: float, delta: float | None = None, dry_run: bool = False,
              idempotency_key: str | None = None, *, level: float = 0.95, encrypt: bool = False,
              wait: float = 600.0) -> Any:
        """Run a federated DP SQL query; returns a QueryResult (a dict of the plan when ``dry_run``).

        ``encrypt=True`` asks for Paillier encrypted delivery: only this client can decrypt.
        """
        if encrypt:
            from xdp_compute.sdk.he import encrypted_query

            return encrypted_query(self, sql, epsilon, delta, idempotency_key=idempotency_key, level=level,
                                   wait=wait, dry_run=dry_run)
        body = {"sql": sql, "epsilon": epsilon, "delta": delta, "dry_run": dry_run,
                "idempotency_key": idempotency_key, "level": level}
        out = self._post("/v1/queries", json=body)
        if dry_run:
            return out
        return query_result(self._wait(out, wait) if out.get("status") != "released" else out)

    def score(self, dataset: str, features: list[str], weights: list[float], bias: float = 0.0,
              where: str | None = None, group_by: list[str] | None = None, *, epsilon: float,
              delta: float | None = None, level: float = 0.95, idempotency_key: str | None = None,
              wait: float = 600.0) -> QueryResult:
        """The mean of w.x + bias per group over the holders' rows; the weights never leave here.

        The gateway releases DP per-group counts and feature sums (``POST /v1/scores``, charged
        like any query); the score and its interval are computed locally from them.
        ``rows`` hold ``score`` (mean) and ``n`` (noisy group size) per group.
        """
        from xdp_compute.sdk.scoring import linear_score

        return linear_score(self, dataset, features, weights, bias, where, group_by, epsilon, delta, level,
                            idempotency_key, wait)

    def train(self, dataset: str, model: str = "logreg", features: list[str] | None = None, label: str = "",
              rounds: int = 10, local_epochs: int = 1, batch_size: int = 64, lr: float | None = None,
              target_epsilon: float = 3.0, delta: float | None = None, max_grad_norm: float | None = None,
              where: str | None = None, hidden: list[int] | None = None,
              idempotency_key: str | None = None) -> Any:
        """Start DP federated training of a vetted model; returns a TrainingJob (``.wait()``, ``.model()``)."""
        from xdp_compute.sdk.training import TrainingJob

        body = {"dataset": dataset, "model": model, "features": list(features or []), "label": label,
                "rounds": rounds, "local_epochs": local_epochs, "batch_size": batch_size, "lr": lr,
                "target_epsilon": target_epsilon, "delta": delta, "max_grad_norm": max_grad_norm, "where": where,
                "hidden": hidden, "idempotency_key": idempotency_key}
        out = self._post("/v1/trainings", json=body)
        return TrainingJob(self, out["job_id"])

    def budget(self, dataset: str) -> dict[str, Any]:
        """Budget left per node of ``dataset`` and the analyst's own."""
        return self._get(f"/v1/budget/{quote(dataset, safe='')}")  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get(f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def jobs(self, status: str | None = None, kind: str | None = None, limit: int = 50,
             before: str | None = None) -> dict[str, Any]:
        """The caller's own jobs, newest first: ``{"jobs": [...], "next_before": cursor or None}``."""
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit, "before": before}.items()
                  if v is not None}
        return self._get("/v1/jobs", params=params)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ holders
    def approvals(self) -> list[dict[str, Any]]:
        """Holders: jobs on your datasets awaiting (or past) your decision."""
        return self._get("/v1/approvals")  # type: ignore[no-any-return]

    def approve(self, job_id: str) -> dict[str, Any]:
        return self._post(f"/v1/approvals/{job_id}/approve")  # type: ignore[no-any-return]

    def deny(self, job_id: str, reason: str) -> dict[str, Any]:
        return self._post(f"/v1/approvals/{job_id}/deny", json={"reason": reason})  # type: ignore[no-any-return]

    def submit_query(self, sql: str, epsilon: float, delta: float | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit without waiting (e.g. a job that needs approval): returns {job_id, status}."""
        return self._post("/v1/queries", json={"sql": sql, "epsilon": epsilon, "delta": delta,  # type: ignore[no-any-return]
                                               "idempotency_key": idempotency_key})

    def result(self, job_id: str, wait: float = 600.0) -> QueryResult:
        """Wait for a submitted query's release and return it."""
        return query_result(self._wait(self.job(job_id), wait))

    # ------------------------------------------------------------------ receipts and audit
    def public_key(self) -> str:
        return self._get("/v1/audit/public-key")["public_key"]  # type: ignore[no-any-return]

    def verify_receipt(self, result: Any, public_key: str | None = None) -> bool:
        """Check a delivered result's receipt: its payload digest is the logged one, the entry is in
        the log (RFC 9162 inclusion proof) under a head signed by the log's key. Raises on failure."""
        import hashlib

        from xdp_compute.audit import canonical_json, verify_receipt
        from xdp_compute.errors import ProofError

        delivery = result.delivery if hasattr(result, "delivery") else result
        receipt = delivery.get("receipt")
        if not receipt:
            raise ProofError("this result carries no receipt")
        key = public_key or self.public_key()
        if receipt["public_key"] != key:
            raise ProofError("the receipt was signed by a key other than the log's published key")
        entry = receipt["entry"]
        payload = delivery["result"]
        if entry.get("payload_digest") != hashlib.sha256(canonical_json(payload)).hexdigest():
            raise ProofError("the delivered payload does not match the digest in the release log")
        from xdp_compute.audit import SignedTreeHead

        return verify_receipt(entry, receipt["log_index"], receipt["tree_size"],
                              [bytes.fromhex(h) for h in receipt["inclusion_proof"]],
                              SignedTreeHead.from_dict(receipt["signed_tree_head"]), bytes.fromhex(key))

    def audit_entries(self, dataset: str | None = None, principal: str | None = None, kind: str | None = None,
                      since: float | None = None, until: float | None = None, start: int = 0,
                      limit: int = 1000) -> list[dict[str, Any]]:
        """Auditors: release-log entries (digests, costs and decisions, never values), filtered."""
        params = {k: v for k, v in {"dataset": dataset, "principal": principal, "kind": kind, "since": since,
                                    "until": until, "start": start, "limit": limit}.items() if v is not None}
        return self._get("/v1/audit/entries", params=params)  # type: ignore[no-any-return]

    def metering(self) -> dict[str, Any]:
        """Auditors (all) and holders (their datasets): jobs, epsilon spent, cells, compute seconds."""
        return self._get("/v1/metering")  # type: ignore[no-any-return]
