"""Task records of the gateway–node contract, and their one wire encoding.

Wire rules (both directions, both sides):
- A task travels as ``(kind, header, blobs)``: ``kind`` names the request record; ``header`` is a
  JSON object holding ``"v": CONTRACT_VERSION`` and exactly the record's non-binary fields;
  ``blobs`` holds exactly its binary fields. A reply travels the same way, its record chosen by
  the request's kind (``REPLY_OF``).
- Decoding is strict: an unknown kind, an unknown or missing field, a wrong type (no ``true``
  for a number, no ``"1"`` for an int), a non-finite float, another contract version — each is
  refused with ``ContractError`` (a 400 that names the field), never guessed.
- Noise variances travel as exact fractions in ``"p/q"`` text (``fraction_text``): the node adds
  integer noise whose variance must be exactly what the plan says, with no float rounding.

Records carry what a node must know to do its part and to check it against its own policy
(issue #12): a query's ``noise_basis`` says what its ``sigma_node2`` was calibrated from, so the
node recomputes the noise it must add and refuses less; ``principal`` names who asked, for the
node's journal. Both are optional on the wire (older gateways omit them); a node that enforces
its own policy refuses a query task without a ``noise_basis``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError

from xdp_compute.errors import BadRequest

CONTRACT_VERSION = 1
_VERSION_KEY = "v"


class ContractError(BadRequest):
    """A task or reply that does not follow the contract (unknown kind, bad or missing field)."""

    slug, title = "contract-violation", "Task contract violated"


def parse_fraction(value: Any) -> Fraction:
    """``"p/q"`` (or ``"p"``) -> a non-negative Fraction; refuses floats, bad denominators and junk."""
    if isinstance(value, Fraction):
        return value  # built in Python, not read from the wire
    if not isinstance(value, str):
        # pydantic turns only ValueError into a validation error
        raise ValueError("a fraction travels as 'p/q' text")  # noqa: TRY004
    num, sep, den = value.partition("/")
    try:
        p, q = int(num), int(den) if sep else 1
    except ValueError:
        raise ValueError(f"not a fraction: {value[:40]!r}") from None
    if q <= 0:
        raise ValueError("a fraction needs a positive denominator")
    if p < 0:
        raise ValueError("a noise variance cannot be negative")
    return Fraction(p, q)


def fraction_text(f: Fraction) -> str:
    """The one text form of an exact fraction on the wire."""
    return f"{f.numerator}/{f.denominator}"


ExactFraction = Annotated[Fraction, PlainValidator(parse_fraction), PlainSerializer(fraction_text)]


class _Blob:
    """Marks a bytes field that travels in ``blobs``, not in the JSON header."""


Blob = Annotated[bytes, _Blob()]


#: Record class -> its blob fields (``Record.blob_fields``).
_BLOB_FIELDS: dict[type, tuple[str, ...]] = {}


class Record(BaseModel):
    """Base of every request and reply: frozen, strict, no extra fields, finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    KIND: ClassVar[str] = ""

    @classmethod
    def blob_fields(cls) -> tuple[str, ...]:
        """The fields that travel as blobs; fixed when the class is made, so worked out once per
        class (issue #13: reading pydantic's field table on every encode and decode was ~5% of
        the gateway's CPU on the query path)."""
        got = _BLOB_FIELDS.get(cls)
        if got is None:
            got = _BLOB_FIELDS[cls] = tuple(n for n, f in cls.model_fields.items()
                                            if any(isinstance(m, _Blob) for m in f.metadata))
        return got


# ---------------------------------------------------------------------- shared parts
class SecAggSession(Record):
    """A secure-aggregation session's configuration, sent with each job's round-0 task."""

    session_id: str = Field(min_length=1, max_length=200)
    participants: list[str] = Field(min_length=1)
    vector_length: int = Field(ge=1)
    threshold: int = Field(ge=1)
    neighbours: int | None = None


class NoiseBasis(Record):
    """What a query's noise was calibrated from: ``plan_noise(epsilon, delta, plan measurements,
    honest_shares)``, where ``honest_shares`` = the parties' threshold minus the gateway's collusion
    margin ``colluding``. The node recomputes the noise from its own re-derived plan, the session's
    threshold and roster (grouped by ``parties``) and its own margin; the counts only explain."""

    epsilon: float = Field(gt=0)   # the epsilon the calibration was asked for (before rounding down)
    delta: float = Field(gt=0, lt=1)
    honest_shares: int = Field(ge=1)
    colluding: int = Field(ge=0)
    # node id -> its party (holder): a holder is one party however many nodes it runs. None: every
    # participant is a party of its own.
    parties: dict[str, str] | None = None


Principal = Annotated[str, Field(min_length=1, max_length=200)]


# ---------------------------------------------------------------------- requests
class Validate(Record):
    """Check the node's sources against its manifest (counts only)."""

    KIND: ClassVar[str] = "validate"


class QueryBegin(Record):
    """Round 0 of a federated query: compute the plan's local vector, add the noise share, and
    advertise secure-aggregation keys."""

    KIND: ClassVar[str] = "query_begin"
    plan: dict[str, Any]
    sigma_node2: dict[str, ExactFraction]  # per measurement: this node's share of the noise variance
    secagg: SecAggSession
    noise_basis: NoiseBasis | None = None  # what sigma_node2 was calibrated from (the node checks it)
    principal: Principal | None = None     # who submitted the job (the node's journal)


class TrainBegin(Record):
    """Round 0 of one training round: DP-SGD from the global parameters; advertise keys."""

    KIND: ClassVar[str] = "train_begin"
    round: int = Field(ge=1)
    epsilon_reserved: float = Field(ge=0)  # what the gateway reserved on this node's ledger for the round
    params: Blob  # the global model, float64 little-endian
    secagg: SecAggSession


class SecAggStep(Record):
    """Rounds 1 to 4 of Bonawitz et al. 2017 (ShareKeys, MaskedInputCollection, ConsistencyCheck,
    Unmasking)."""

    KIND: ClassVar[str] = "secagg_step"  # the concrete kinds are the three below
    session_id: str = Field(min_length=1, max_length=200)
    secagg: Blob


class SecAggShareKeys(SecAggStep):
    KIND: ClassVar[str] = "secagg_share_keys"


class SecAggMaskedInput(SecAggStep):
    KIND: ClassVar[str] = "secagg_masked_input"


class SecAggConsistency(SecAggStep):
    """Round 3 (ConsistencyCheck): the survivor set U3, which the node checks and signs."""

    KIND: ClassVar[str] = "secagg_consistency"


class SecAggUnmask(SecAggStep):
    KIND: ClassVar[str] = "secagg_unmask"


class HeQueryBegin(Record):
    """Round 0 of a Paillier encrypted-delivery query: as ``QueryBegin``, in a *sealed*
    secure-aggregation session. Its masked input (Round 2) travels encrypted under the analyst's
    key, and in the clear only at the plan's COUNT(*) slots (``query.sealed``), so no single
    node's partial is ever decryptable, by the analyst or by anyone the gateway hands it to."""

    KIND: ClassVar[str] = "he_query_begin"
    plan: dict[str, Any]
    sigma_node2: dict[str, ExactFraction]
    public_key: dict[str, Any]
    scheme: dict[str, Any]
    secagg: SecAggSession
    noise_basis: NoiseBasis | None = None
    principal: Principal | None = None


class HeQueryMaskedInput(SecAggStep):
    """Round 2 (MaskedInputCollection) of a sealed session: the node's shares, as for
    ``SecAggMaskedInput``; the answer is ``HeQueryMaskedReply``."""

    KIND: ClassVar[str] = "he_query_masked_input"


class TrainPrepare(Record):
    """Load and encode the training rows, plan DP-SGD; answer with the first round's cost."""

    KIND: ClassVar[str] = "train_prepare"
    spec: dict[str, Any]
    n_features: int = Field(ge=1)
    n_classes: int = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    where_plan: dict[str, Any] | None = None
    principal: Principal | None = None  # who submitted the job (the node's journal)


class TrainEval(Record):
    """Noisy held-out metrics of the final model; then the node forgets the job."""

    KIND: ClassVar[str] = "train_eval"
    params: Blob


# ---------------------------------------------------------------------- replies
class Validated(Record):
    KIND: ClassVar[str] = "validate"
    datasets: list[dict[str, Any]]
    ok: bool


class SecAggMessage(Record):
    """A secure-aggregation message from the node (its reply to every SecAggStep)."""

    KIND: ClassVar[str] = "secagg_step"
    secagg: Blob


class QueryBegun(SecAggMessage):
    KIND: ClassVar[str] = "query_begin"


class TrainRoundBegun(SecAggMessage):
    KIND: ClassVar[str] = "train_begin"
    epsilon: float = Field(ge=0)         # this node's accountant after the round
    epsilon_round: float = Field(ge=0)   # what the round added
    steps: int = Field(ge=0)
    next_cost: float | None = None       # what the next round will add; None: the plan is done
    metrics: dict[str, Any] = Field(default_factory=dict)


class HeQueryBegun(SecAggMessage):
    KIND: ClassVar[str] = "he_query_begin"


class HeQueryMaskedReply(Record):
    """A sealed masked input: y_u at the revealed slots (a secure-aggregation ``MaskedInput``) and
    all of y_u encrypted under the analyst's key (an ``EncryptedVector``)."""

    KIND: ClassVar[str] = "he_query_masked_input"
    secagg: Blob
    ciphertext: Blob


class TrainPrepared(Record):
    KIND: ClassVar[str] = "train_prepare"
    next_cost: float | None
    delta: float
    rounds_planned: int


class TrainEvaluated(Record):
    KIND: ClassVar[str] = "train_eval"
    metrics: dict[str, Any]
    epsilon: float


# ---------------------------------------------------------------------- private joins (issue #16)
# The rounds of docs/private-joins.md. Holder-to-holder parts travel ``sealed`` (X25519 + AEAD
# between the two nodes, keys advertised in JoinKeys and signed with the node certificate when the
# deployment has a PKI): the gateway forwards them and can neither read nor forge them. Sizes are
# bounded here; the node checks every point and ciphertext it opens.
MAX_JOIN_BLOB = 256 << 20   # one join message: (max_rows + dummies) x (32-byte point + ciphertext)
_JoinBlob = Annotated[bytes, _Blob(), Field(max_length=MAX_JOIN_BLOB)]


class JoinKeys(Record):
    """Round 0: check the join task against this node's own policy, charge it, load and blind nothing
    yet; answer with a fresh X25519 key for the sealed channel to the other holder."""

    KIND: ClassVar[str] = "join_keys"
    plan: dict[str, Any]                 # the JoinPlan (``query.plan.JoinPlan.to_dict``)
    side: str = Field(pattern="^[AB]$")  # A: indicator side; B: value side
    peer: str = Field(min_length=1, max_length=200)   # the other holder's node id
    public_key: dict[str, Any]           # the analyst's Paillier key
    principal: Principal | None = None


class JoinSeed(Record):
    """Round 0b: the peer's advertised key; answer with this node's half of the dummy seed, sealed."""

    KIND: ClassVar[str] = "join_seed"
    peer_key: _JoinBlob
    peer_signature: _JoinBlob
    peer_certificate: _JoinBlob


class JoinBegin(Record):
    """Round 1: the peer's sealed seed half; answer with the blinded keys (A: X and E; B: Y), sealed."""

    KIND: ClassVar[str] = "join_begin"
    sealed: _JoinBlob


class JoinDoubleBlind(Record):
    """Round 2: the peer's sealed blinded keys; answer with tags (B also the re-randomised E')."""

    KIND: ClassVar[str] = "join_double_blind"
    sealed: _JoinBlob


class JoinUnpermute(Record):
    """Round 4 (A): the aligned ciphertexts in A's tau order; answer them in B's order, sealed for B."""

    KIND: ClassVar[str] = "join_unpermute"
    ciphertexts: _JoinBlob


class JoinAggregate(Record):
    """Round 5 (B): A's sealed list; answer one ciphertext per (B-cell, measurement) with B's noise."""

    KIND: ClassVar[str] = "join_aggregate"
    sealed: _JoinBlob


class JoinNoise(Record):
    """Round 6 (A): B's output ciphertexts; answer them with A's noise share added; the job ends here."""

    KIND: ClassVar[str] = "join_noise"
    ciphertexts: _JoinBlob


class JoinKeysReply(Record):
    KIND: ClassVar[str] = "join_keys"
    key: Blob
    signature: Blob
    certificate: Blob


class JoinSealed(Record):
    """A reply the gateway forwards to the other holder as it is."""

    KIND: ClassVar[str] = "join_sealed"
    sealed: _JoinBlob


class JoinTags(Record):
    """Tags of doubly-blinded keys (16 bytes each), and for B the re-randomised E' in the same order."""

    KIND: ClassVar[str] = "join_double_blind"
    tags: _JoinBlob
    ciphertexts: _JoinBlob


class JoinCiphertexts(Record):
    KIND: ClassVar[str] = "join_ciphertexts"
    ciphertexts: _JoinBlob


JOIN_REQUESTS: tuple[type[Record], ...] = (JoinKeys, JoinSeed, JoinBegin, JoinDoubleBlind, JoinUnpermute,
                                           JoinAggregate, JoinNoise)
JOIN_REPLY_OF: dict[str, type[Record]] = {
    "join_keys": JoinKeysReply, "join_seed": JoinSealed, "join_begin": JoinSealed,
    "join_double_blind": JoinTags, "join_unpermute": JoinSealed, "join_aggregate": JoinCiphertexts,
    "join_noise": JoinCiphertexts}


REQUESTS: dict[str, type[Record]] = {r.KIND: r for r in (
    Validate, QueryBegin, TrainBegin, SecAggShareKeys, SecAggMaskedInput, SecAggConsistency, SecAggUnmask,
    HeQueryBegin,
    HeQueryMaskedInput, TrainPrepare, TrainEval)}
REPLY_OF: dict[str, type[Record]] = {
    "validate": Validated, "query_begin": QueryBegun, "train_begin": TrainRoundBegun,
    "secagg_share_keys": SecAggMessage, "secagg_masked_input": SecAggMessage, "secagg_consistency": SecAggMessage,
    "secagg_unmask": SecAggMessage,
    "he_query_begin": HeQueryBegun, "he_query_masked_input": HeQueryMaskedReply, "train_prepare": TrainPrepared,
    "train_eval": TrainEvaluated}
REQUESTS.update({r.KIND: r for r in JOIN_REQUESTS})  # private joins (issue #16)
REPLY_OF.update(JOIN_REPLY_OF)


# ---------------------------------------------------------------------- wire encoding
def encode(record: Record) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Record -> (JSON header with the contract version, blobs)."""
    blobs_fields = record.blob_fields()
    header = record.model_dump(mode="json", exclude=set(blobs_fields))
    header[_VERSION_KEY] = CONTRACT_VERSION
    return header, {name: bytes(getattr(record, name)) for name in blobs_fields}


def _decode(cls: type[Record], kind: str, header: Any, blobs: Any) -> Record:
    if not isinstance(header, dict):
        raise ContractError(f"{kind}: the header must be a JSON object")
    if header.get(_VERSION_KEY) != CONTRACT_VERSION:
        raise ContractError(f"{kind}: contract version {header.get(_VERSION_KEY)!r}, this side speaks "
                            f"{CONTRACT_VERSION}")
    blob_names = set(cls.blob_fields())
    blobs = dict(blobs or {})
    unexpected = sorted(set(blobs) - blob_names)
    if unexpected:
        raise ContractError(f"{kind}: unexpected blob {unexpected[0]!r}")
    fields = {k: v for k, v in header.items() if k != _VERSION_KEY}
    clash = sorted(set(fields) & blob_names)
    if clash:
        raise ContractError(f"{kind}: {clash[0]!r} must travel as a blob")
    for name in blob_names & set(blobs):
        fields[name] = bytes(blobs[name])
    try:
        # Header values came out of JSON: validate them as JSON types, strictly.
        return cls.model_validate(fields)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "header"
        raise ContractError(f"{kind}: {where}: {err.get('msg', 'invalid')}") from None


def decode_request(kind: str, header: Any, blobs: Any = None) -> Record:
    """A task from the gateway -> its typed request (the node side)."""
    cls = REQUESTS.get(kind)
    if cls is None:
        raise ContractError(f"unknown task kind {kind!r} (this node speaks contract v{CONTRACT_VERSION}: "
                            f"{', '.join(sorted(REQUESTS))})")
    return _decode(cls, kind, header, blobs)


def decode_reply(kind: str, header: Any, blobs: Any = None) -> Record:
    """A node's answer to a ``kind`` task -> its typed reply (the gateway side)."""
    cls = REPLY_OF.get(kind)
    if cls is None:
        raise ContractError(f"no reply is defined for task kind {kind!r}")
    return _decode(cls, kind, header, blobs)


__all__ = [
    "CONTRACT_VERSION",
    "REPLY_OF",
    "REQUESTS",
    "Blob",
    "ContractError",
    "ExactFraction",
    "HeQueryBegin",
    "HeQueryBegun",
    "HeQueryMaskedInput",
    "HeQueryMaskedReply",
    "JoinAggregate",
    "JoinBegin",
    "JoinCiphertexts",
    "JoinDoubleBlind",
    "JoinKeys",
    "JoinKeysReply",
    "JoinNoise",
    "JoinSealed",
    "JoinSeed",
    "JoinTags",
    "JoinUnpermute",
    "NoiseBasis",
    "QueryBegin",
    "QueryBegun",
    "Record",
    "SecAggConsistency",
    "SecAggMaskedInput",
    "SecAggMessage",
    "SecAggSession",
    "SecAggShareKeys",
    "SecAggStep",
    "SecAggUnmask",
    "TrainBegin",
    "TrainEval",
    "TrainEvaluated",
    "TrainPrepare",
    "TrainPrepared",
    "TrainRoundBegun",
    "Validate",
    "Validated",
    "decode_reply",
    "decode_request",
    "encode",
    "fraction_text",
    "parse_fraction",
]


# ---------------------------------------------------------------------- hidden lookups (issue #17)
# Keyword PIR (docs/hidden-lookup.md): the node builds an encoded table per (dataset, product),
# hands it out in parts, and answers one OPRF evaluation of a blinded point per charged lookup.
# Every lookup task has the same fields and sizes whatever key the analyst looks up.
LOOKUP_POINT_BYTES = 32
LOOKUP_PART_BYTES = 4 << 20  # the table travels in parts under gRPC's message limit
# A node's refusal of a version it no longer serves (data changed, node restarted): the SDK refetches.
LOOKUP_STALE = "this lookup table version is no longer served; fetch the table again"
_LookupPoint = Annotated[bytes, _Blob(), Field(min_length=LOOKUP_POINT_BYTES, max_length=LOOKUP_POINT_BYTES)]
_LookupPart = Annotated[bytes, _Blob(), Field(max_length=LOOKUP_PART_BYTES)]
_LookupProof = Annotated[bytes, _Blob(), Field(min_length=64, max_length=64)]
_Name = Annotated[str, Field(min_length=1, max_length=200)]
_TableVersion = Annotated[str, Field(pattern="^[0-9a-f]{32}$")]


class LookupPrepare(Record):
    """Build (or reuse) the product's lookup table on this node; answer its public shape."""

    KIND: ClassVar[str] = "lookup_prepare"
    dataset: _Name
    product: _Name
    columns: list[_Name] = Field(min_length=1)  # the product's columns (the node checks its own opt-in)


class LookupPrepared(Record):
    KIND: ClassVar[str] = "lookup_prepare"
    version: _TableVersion      # random per (product, data version, OPRF key)
    key_type: str = Field(pattern="^(text|int)$")
    columns: list[_Name]
    capacity: int = Field(ge=1)
    label_bytes: int = Field(ge=1)
    table_bytes: int = Field(ge=1)
    parts: int = Field(ge=1)


class LookupTablePart(Record):
    """One part (``LOOKUP_PART_BYTES``) of a table version."""

    KIND: ClassVar[str] = "lookup_table_part"
    dataset: _Name
    product: _Name
    version: _TableVersion
    part: int = Field(ge=0)


class LookupTablePartReply(Record):
    KIND: ClassVar[str] = "lookup_table_part"
    version: _TableVersion
    data: _LookupPart


class LookupEvaluate(Record):
    """RFC 9497 BlindEvaluate of one blinded point with the OPRF key of a table version."""

    KIND: ClassVar[str] = "lookup_evaluate"
    dataset: _Name
    product: _Name
    version: _TableVersion
    point: _LookupPoint
    principal: Principal | None = None  # who looks up (the holder's own log); never the key


class LookupEvaluated(Record):
    KIND: ClassVar[str] = "lookup_evaluate"
    version: _TableVersion
    point: _LookupPoint
    proof: _LookupProof  # RFC 9497 VOPRF: point = k·B for the k of the table's public key


LOOKUP_REQUESTS: tuple[type[Record], ...] = (LookupPrepare, LookupTablePart, LookupEvaluate)
REQUESTS.update({r.KIND: r for r in LOOKUP_REQUESTS})
REPLY_OF.update({"lookup_prepare": LookupPrepared, "lookup_table_part": LookupTablePartReply,
                 "lookup_evaluate": LookupEvaluated})
__all__ += ["LOOKUP_PART_BYTES", "LOOKUP_POINT_BYTES", "LOOKUP_STALE", "LookupEvaluate", "LookupEvaluated", "LookupPrepare",
            "LookupPrepared", "LookupTablePart", "LookupTablePartReply"]


# ---------------------------------------------------------------------- data exchange (issue #17)
class Commit(Record):
    """Commit to one dataset's content: a keyed hash over its rows in canonical order (node/tasks/commit.py)."""

    KIND: ClassVar[str] = "commit"
    dataset: str = Field(min_length=1, max_length=64)


class Committed(Record):
    KIND: ClassVar[str] = "commit"
    commitment: str = Field(pattern="^[0-9a-f]{64}$")  # hex HMAC-SHA256; never a row, never a count
    scheme: str = Field(min_length=1, max_length=200)


REQUESTS[Commit.KIND] = Commit
REPLY_OF[Commit.KIND] = Committed
__all__ += ["Commit", "Committed"]
