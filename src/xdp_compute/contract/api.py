"""The REST contract: every answer of the gateway's ``/v1`` API as a typed record.

One vocabulary for both sides, like ``contract.tasks`` for gateway and node: the routers declare
these as ``response_model`` (so the OpenAPI document shows them and the gateway cannot answer
outside them), and the SDK reads answers with ``model_validate``. Nothing here imports FastAPI,
SQLAlchemy or httpx (tests/test_architecture.py).

Wire rules:
- Fields may be added, never renamed or retyped. Every record allows members it does not
  declare (``extra="allow"``) so an older SDK reads a newer gateway, and the gateway's own
  additions (e.g. ``score_sql`` on a score) pass through unchanged.
- Results, plans, receipts and log entries are nested JSON the release gate and the release log
  define (``gateway/release.py``); they stay ``dict`` here, byte for byte as the gateway builds
  them, so a receipt's payload digest still matches what the SDK recomputes.
- Records read like the dicts the SDK used to return (``ds["name"]``, ``job.get("error")``), so
  scripts written against that SDK keep working; attribute access is the typed way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["awaiting_approval", "reserved", "running", "released", "denied", "failed"]
JOB_STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


class ApiModel(BaseModel):
    """Base of every REST answer: unknown members kept; read like a dict as well as by attribute."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        # As for the dict the gateway sent: a member is "in" the record when the answer carried it
        # (a declared field left at its default was not sent).
        return isinstance(key, str) and (key in self.model_fields_set or key in (self.model_extra or {}))

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get``: the member ``key`` as the gateway sent it, or ``default`` when it sent none."""
        return getattr(self, key) if key in self else default

    def keys(self) -> Iterator[str]:
        return (k for k, _ in self)


class Problem(ApiModel):
    """RFC 9457 problem details: every error answer (``application/problem+json``)."""

    type: str = Field(description="Stable URI naming the failure, e.g. .../problems/budget-exhausted")
    title: str
    status: int
    detail: str
    instance: str | None = None

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "type": "https://xdp-compute.dev/problems/budget-exhausted", "title": "Privacy budget exhausted",
        "status": 403, "detail": "dataset 'patients' on node 'siming-hospital' has epsilon 0.2 left; "
                                 "the query needs 1.0", "instance": "/v1/queries"}]})


# ---------------------------------------------------------------- principals, catalog, nodes
class Me(ApiModel):
    id: str
    name: str
    role: Literal["admin", "holder", "analyst", "auditor"]
    region: str


class DatasetPolicy(ApiModel):
    min_group_size: int
    require_approval: bool
    allowed_analysts: list[str] | None = None
    allowed_regions: list[str] | None = None


class DatasetNode(ApiModel):
    name: str
    region: str
    online: bool
    role: str
    epsilon_budget: float
    delta: float


class Dataset(ApiModel):
    """A catalog entry: schema, classification, the owner's policy and the nodes; no data-derived figure."""

    name: str
    owner: str | None = None
    members: list[str] = []
    classification: str
    categories: list[str] = []
    columns: list[dict[str, Any]]
    policy: DatasetPolicy
    nodes: list[DatasetNode]


class MockPreview(ApiModel):
    dataset: str
    synthetic: bool
    note: str
    rows: list[dict[str, Any]]


class NodeCertificate(ApiModel):
    subject: str
    fingerprint: str = Field(description="SHA-256 of the certificate's DER encoding, hex")
    not_after: float = Field(description="Expiry, POSIX seconds")


class Node(ApiModel):
    id: str
    name: str
    region: str
    online: bool
    last_seen: float
    datasets: list[str]
    version: str | None = Field(None, description="The version the node reported when it registered")
    certificate: NodeCertificate | None = Field(None, description="The node's TLS client certificate "
                                                                  "(none on a plaintext loopback gateway)")


class NodeValidation(ApiModel):
    node: str
    datasets: list[dict[str, Any]]
    ok: bool


class Member(ApiModel):
    holder: str
    invited_by: str
    invited_at: float


class Membership(ApiModel):
    dataset: str
    owner: str | None = None
    members: list[Member]


class MemberChange(ApiModel):
    dataset: str
    holder: str
    member: bool


# ---------------------------------------------------------------- jobs
class Accepted(ApiModel):
    """202: the job exists and waits (for its holders' approval, or runs in the background)."""

    job_id: str
    status: JobStatus
    detail: str | None = None


class Delivery(ApiModel):
    """A released answer: the result as the release gate passed it, its cost, the budget left and a receipt."""

    job_id: str
    status: Literal["released"]
    operation: str
    result: dict[str, Any]
    log_index: int
    budget_left: dict[str, Any] = {}
    cost: dict[str, Any] = {}
    receipt: dict[str, Any] | None = None


class DryRun(ApiModel):
    """What a query would cost and how precise it would be; nothing computed, nothing charged."""

    dry_run: Literal[True]
    dataset: str
    operation: str
    plan: dict[str, Any]
    cost: dict[str, Any]
    level: float
    expected_error: dict[str, Any]
    decisions: list[dict[str, Any]]
    allowed: bool


class Job(ApiModel):
    """A job's status; once released also its delivery (``result``, ``log_index``, ``receipt``)."""

    job_id: str
    status: JobStatus
    operation: str
    created_at: float
    cost: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    log_index: int | None = None
    budget_left: dict[str, Any] | None = None
    receipt: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    awaiting: list[str] | None = Field(None, description="While awaiting approval: the holders who have not "
                                                           "decided yet")


class JobSummary(ApiModel):
    job_id: str
    status: JobStatus
    operation: str
    created_at: float
    updated_at: float
    cost: dict[str, Any] = {}


class JobPage(ApiModel):
    """One page of the caller's jobs, newest first; pass ``next_before`` as ``before`` for the next."""

    jobs: list[JobSummary]
    next_before: str | None = None


class NodeBudget(ApiModel):
    node: str
    epsilon_budget: float
    epsilon_spent: float
    epsilon_reserved: float
    epsilon_left: float
    delta_budget: float
    delta_spent: float


class AnalystBudget(ApiModel):
    """The analyst's own budget (before its first job: the gateway's default, nothing spent)."""

    epsilon_budget: float | None = None
    epsilon_spent: float | None = None
    epsilon_reserved: float | None = None
    delta_budget: float | None = None
    delta_spent: float | None = None


class Budget(ApiModel):
    dataset: str
    nodes: list[NodeBudget]
    analyst: AnalystBudget


class AnalystSpend(ApiModel):
    epsilon_spent: float = Field(description="ε of this analyst's released jobs on the dataset (release log)")
    delta_spent: float
    released: int
    refused: int


class DatasetSpend(ApiModel):
    """A dataset's budget per node (the caller's visible parts) and what each analyst spent on it."""

    dataset: str
    nodes: list[NodeBudget]
    analysts: dict[str, AnalystSpend]


class Approval(ApiModel):
    """A job on the holder's dataset with its plan, principal, cost and policy decisions (never data)."""

    job_id: str
    status: JobStatus
    your_decision: str
    reason: str | None = None
    principal: str
    operation: str
    request: dict[str, Any]
    cost: dict[str, Any]
    decisions: list[dict[str, Any]]
    plan_summary: dict[str, Any]
    created_at: float


class ApprovalDecision(ApiModel):
    job_id: str
    decision: Literal["approved", "denied"]
    job_runs: bool | None = None


# ---------------------------------------------------------------- release log
class PublicKey(ApiModel):
    algorithm: str
    public_key: str
    key_id: str


class SignedTreeHead(ApiModel):
    tree_size: int
    root_hash: str
    timestamp_ms: int
    signature: str
    key_id: str


class LogHead(ApiModel):
    tree_size: int
    signed_tree_head: SignedTreeHead | None = None
    integrity_problem: str | None = None


class LogEntry(ApiModel):
    """One release-log entry: who, what, which datasets, the decision and its cost; digests, never values."""

    index: int
    time: float
    kind: str
    job_id: str | None = None
    principal: str | None = None
    operation: str | None = None
    datasets: list[str] | None = None


class InclusionProof(ApiModel):
    index: int
    tree_size: int
    proof: list[str]


class ConsistencyProof(ApiModel):
    first: int
    second: int
    proof: list[str]


class Cosigned(ApiModel):
    origin: str
    log_vkey: str
    checkpoints: list[Any]


class Witness(ApiModel):
    name: str
    vkey: str
    tree_size: int | None = None
    cosigned_at: float | None = None


class Metering(ApiModel):
    """Per analyst and per dataset: jobs, released, refused, epsilon spent, cells released, compute seconds."""

    per_analyst: dict[str, dict[str, float]]
    per_dataset: dict[str, dict[str, float]]


class SpendPoint(ApiModel):
    """One released entry on a metering track: when, which log entry, and the ε spent so far."""

    time: float
    index: int
    epsilon: float = Field(description="Cumulative epsilon released on this track up to this entry")


class MeteringTrack(ApiModel):
    epsilon_over_time: list[SpendPoint]
    jobs_by_kind: dict[str, int] = Field(description="Metered log entries by kind (released, denied, ...)")


class MeteringSeries(ApiModel):
    """Metering over time, per analyst and per dataset, from the same log entries as ``/v1/metering``."""

    per_analyst: dict[str, MeteringTrack]
    per_dataset: dict[str, MeteringTrack]


# ---------------------------------------------------------------- data exchange (issue #17)
class AssetVersion(ApiModel):
    """One registered version of a data asset: its release-log entry (``asset_registered``)."""

    index: int = Field(description="The entry's release-log index")
    time: float
    kind: str
    principal: str = Field(description="The owner who registered it")
    datasets: list[str]
    version: int = Field(description="1 for the first registration, n+1 for each re-registration")
    previous_index: int | None = Field(None, description="Log index of the previous version (None for version 1)")
    asset: dict[str, Any] = Field(description="Owner, description, classification, grade, categories, schema "
                                              "with declared bounds, licence, nodes")
    metadata_commitment: str = Field(description="SHA-256 (hex) of the canonical JSON of `asset`")
    content_commitment: str = Field(description="SHA-256 (hex) of the canonical JSON of `node_commitments`")
    node_commitments: dict[str, str] = Field(description="Per node: HMAC-SHA256 under the node's own key over "
                                                         "its rows in canonical order (hex)")
    commitment_scheme: str


class SubscriptionRecord(ApiModel):
    """A subscription to a product: pending until the product's owner approves or rejects it."""

    id: str
    product_id: str
    product: str = Field(description="The product's title")
    dataset: str
    kind: Literal["query", "scoring", "model", "lookup"]
    status: Literal["pending", "approved", "rejected"]
    unit: str
    allowance: float = Field(description="Units allowed per subscriber (epsilon, calls or rows)")
    used: float
    held: float = Field(description="Units held by jobs not yet released")
    left: float
    created_at: float
    decided_at: float | None = None
    reason: str | None = None
    subscriber: str | None = None


class Product(ApiModel):
    """A product listed on an owner's dataset, as buyers browse it."""

    id: str
    dataset: str
    owner: str
    kind: Literal["query", "scoring", "model", "lookup"]
    title: str
    description: str
    unit: Literal["epsilon", "call", "row"]
    unit_price: float = Field(description="Price per unit")
    allowance_per_subscriber: float
    terms: dict[str, Any] = Field(description="Kind-specific terms: allowed SQL shapes (query), columns (lookup)")
    log_index: int = Field(description="The listing's release-log entry")
    created_at: float
    subscription: SubscriptionRecord | None = Field(None, description="The caller's own subscription, if any")


class StatementLine(ApiModel):
    product_id: str
    product: str
    dataset: str
    kind: str
    unit: str
    unit_price: float
    uses: int
    units: float
    amount_micros: int
    log_indexes: list[int] = Field(description="Released entries metered on this line (jobs: queries, scores, trainings)")


class Statement(ApiModel):
    """A settlement statement of one party for one billing period (a log entry once issued)."""

    period: str
    side: Literal["subscriber", "holder"]
    party: str
    lines: list[StatementLine]
    total_micros: int = Field(description="The total in micro-units (exact: the sum of the lines)")
    total: float
    usage_ids: list[int]
    rule: str
    issued: bool = Field(description="True: a release-log entry (`index`); false: computed now, not settled")
    index: int | None = None


# ---------------------------------------------------------------- hidden lookups (issue #17)
class LookupTableInfo(ApiModel):
    """A lookup product's current encoded table (docs/hidden-lookup.md): its public shape only."""

    product: str
    dataset: str
    version: str = Field(description="32 hex digits; a new version whenever the data or the node's key changes")
    key_type: Literal["text", "int"] = Field(description="How the SDK writes a key (text: NFC, trimmed; int: "
                                                         "decimal)")
    columns: list[str] = Field(description="The columns a found record holds")
    capacity: int = Field(description="Entries in the table, dummies included (declared; not the row count)")
    label_bytes: int = Field(description="Every record's padded size")
    table_bytes: int
    parts: int = Field(description="GET .../tables/{version}/parts/{0..parts-1}")
    part_bytes: int


class LookupEvaluation(ApiModel):
    """One hidden lookup's evaluation: the holder's k·B for the SDK's blinded point B (RFC 9497)."""

    product: str
    version: str
    point: str = Field(description="32 bytes, base64: the SDK unblinds it and looks the result up locally")
    proof: str = Field(description="64 bytes, base64: the holder's proof that it used the key its table was "
                                   "published under (RFC 9497 VOPRF); the SDK checks it")
    log_index: int = Field(description="The release-log entry of this lookup (no key, no outcome)")
    calls_left: float = Field(description="Calls left on the subscription")
    receipt: dict[str, Any] = Field(description="Inclusion proof and signed tree head of the entry")
