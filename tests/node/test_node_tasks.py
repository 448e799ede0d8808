"""The node's end of the task contract: ``TaskExecutor.handle`` with contract-encoded requests.

In-process executors play the nodes and ``SecAggServer`` the gateway, so a query's round 0 and
the four secure-aggregation steps run exactly as over gRPC, minus the transport.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xdp_compute.node
from xdp_compute.contract import (
    REQUESTS,
    NoiseBasis,
    QueryBegin,
    QueryBegun,
    Record,
    SecAggConsistency,
    SecAggMaskedInput,
    SecAggMessage,
    SecAggSession,
    SecAggShareKeys,
    SecAggUnmask,
    TrainBegin,
    TrainEval,
    TrainEvaluated,
    TrainPrepare,
    TrainPrepared,
    TrainRoundBegun,
    Validate,
    Validated,
    decode_reply,
    encode,
)
from xdp_compute.crypto.secagg import ConsistencyCheck, Phase, SecAggConfig, SecAggServer, UnmaskRequest
from xdp_compute.domain.manifest import Manifest, load_manifest
from xdp_compute.node.executors import TaskExecutor
from xdp_compute.node.policy import measurements_of
from xdp_compute.node.sources import run_local_query
from xdp_compute.node.tasks.query import add_noise, seeded_noise_key
from xdp_compute.privacy import plan_noise
from xdp_compute.privacy.randomness import SeededRandomness
from xdp_compute.query import QueryPlan, decode_totals, plan_query

MANIFEST = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "patients"
source = "patients.csv"
classification = "internal"
epsilon_budget = 10
delta = 1e-5

[datasets.columns]
age      = {{ type = "int",      min = 0, max = 100, uses = ["aggregate", "filter"] }}
income   = {{ type = "float",    min = 0, max = 1000, uses = ["aggregate"] }}
district = {{ type = "category", values = ["north", "south"], uses = ["group", "filter"] }}
sick     = {{ type = "bool",     uses = ["aggregate", "filter"] }}
"""

SQL = "SELECT district, COUNT(*) AS n, SUM(income) AS total FROM patients WHERE age > 30 GROUP BY district"
SEED = "node-tasks"


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        age = int(rng.integers(0, 101))
        income = round(float(rng.uniform(0, 1000)), 2)
        out.append({"age": age, "income": income, "district": str(rng.choice(["north", "south"])),
                    "sick": "true" if age + rng.normal(0, 10) > 55 else "false"})
    return out


@dataclass
class Node:
    name: str
    manifest: Manifest
    rows: list[dict[str, Any]]
    executor: TaskExecutor

    def ask(self, request: Record, job_id: str = "job-1") -> Record:
        """Send one contract-encoded task; the decoded reply (the test fails on a refusal)."""
        header, blobs = encode(request)
        out = self.executor.handle(request.KIND, job_id, header, blobs)
        assert out.ok, out.error
        assert out.header["v"] == 1
        return decode_reply(request.KIND, out.header, out.blobs)


def _node(root: Path, name: str, n_rows: int, seed: int) -> Node:
    d = root / name
    d.mkdir()
    rows = _rows(n_rows, seed)
    with (d / "patients.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["age", "income", "district", "sick"])
        w.writeheader()
        w.writerows(rows)
    (d / "node.toml").write_text(MANIFEST.format(node=name))
    manifest = load_manifest(d / "node.toml")
    executor = TaskExecutor(manifest)
    executor.node_id = f"id-{name}"
    return Node(name, manifest, rows, executor)


@pytest.fixture
def nodes(tmp_path: Path) -> list[Node]:
    return [_node(tmp_path, f"h{i}", 60 + 20 * i, seed=i) for i in range(3)]


def _plan(node: Node) -> QueryPlan:
    return plan_query(SQL, node.manifest.datasets[0])


# What the tasks' noise is calibrated from; one honest share is the most any session here needs
# (nodes recompute the noise from this and refuse less: ``node.policy``).
BASIS = NoiseBasis(epsilon=1.0, delta=1e-6, honest_shares=1, colluding=1)


def _sigmas(plan: QueryPlan) -> dict[str, Fraction]:
    noise = plan_noise(BASIS.epsilon, BASIS.delta, measurements_of(plan), 1)
    return {m.name: m.sigma_node2 for m in noise.measurements}


def _secure_sum(nodes: list[Node], begin: Callable[[SecAggSession], Record], *, threshold: int,
                drop_before_masking: tuple[str, ...] = (), drop_before_signing: tuple[str, ...] = (),
                job_id: str = "job-1", session_id: str = "job-1:sum"
                ) -> tuple[np.ndarray, list[str], dict[str, Record]]:
    """Rounds 0 to 4 with the executors as clients and SecAggServer as the gateway.

    ``drop_before_signing``: nodes that send their masked input but not their Round 3 signature.
    """
    ids = [n.executor.node_id for n in nodes]
    by_id = {n.executor.node_id: n for n in nodes}
    vector_length = _plan(nodes[0]).vector_length
    config = SecAggConfig(session_id=session_id, participants=ids, vector_length=vector_length,
                          threshold=threshold)
    session = SecAggSession(session_id=session_id, participants=ids, vector_length=vector_length,
                            threshold=config.t)
    server = SecAggServer(config)
    first = {}
    for u in ids:  # Round 0 (AdvertiseKeys), with the node's input computed first
        first[u] = by_id[u].ask(begin(session), job_id)
        assert isinstance(first[u], SecAggMessage)
        server.receive(u, first[u].secagg)
    server.close_advertise_keys()
    for u in server.survivors(Phase.ADVERTISE_KEYS):  # Round 1 (ShareKeys)
        reply = by_id[u].ask(SecAggShareKeys(session_id=session_id, secagg=server.roster_for(u).encode()), job_id)
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    server.close_share_keys()
    for u in server.survivors(Phase.SHARE_KEYS):  # Round 2 (MaskedInputCollection)
        if u in drop_before_masking:
            continue
        reply = by_id[u].ask(SecAggMaskedInput(session_id=session_id, secagg=server.shares_for(u).encode()),
                             job_id)
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    check = server.close_masked_input()
    u3 = list(server.survivors(Phase.MASKED_INPUT))
    for u in u3:  # Round 3 (ConsistencyCheck)
        if u in drop_before_signing:
            continue
        reply = by_id[u].ask(SecAggConsistency(session_id=session_id, secagg=check.encode()), job_id)
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    request = server.close_consistency()
    for u in server.survivors(Phase.CONSISTENCY):  # Round 4 (Unmasking)
        reply = by_id[u].ask(SecAggUnmask(session_id=session_id, secagg=request.encode()), job_id)
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    return server.close_unmask(), u3, first


def _expected_noisy(node: Node, plan: QueryPlan, k: int) -> np.ndarray:
    """The node's noisy vector, recomputed from the test-only seeded noise (its k-th noisy task)."""
    partial = run_local_query(plan, node.manifest, node.manifest.datasets[0])
    return add_noise(partial, plan, _sigmas(plan), SeededRandomness(seeded_noise_key(SEED, node.name, k)))


def _sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total = total + v  # uint64 arithmetic wraps mod 2^64, as the masks do
    return total


# ---------------------------------------------------------------------------------------------
# the handler table


def test_handler_table_lists_exactly_the_contract_kinds(nodes: list[Node]) -> None:
    table = nodes[0].executor.handler_table()
    assert set(table) == set(REQUESTS)
    assert all(callable(h) for h in table.values())
    # Built by the executor itself, the same every time: nothing depends on what was imported before.
    assert set(TaskExecutor(nodes[0].manifest).handlers) == set(REQUESTS)


def test_node_package_has_no_registration_modules() -> None:
    root = Path(xdp_compute.node.__file__).parent
    names = {p.name for p in root.rglob("*.py")}
    assert "jobs.py" not in names
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "def provider(" not in text and "def install(" not in text, path


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_reports_every_dataset(nodes: list[Node]) -> None:
    reply = nodes[0].ask(Validate())
    assert isinstance(reply, Validated)
    assert reply.ok is True
    assert [d["dataset"] for d in reply.datasets] == ["patients"]
    assert reply.datasets[0]["rows"] == len(nodes[0].rows)


# ---------------------------------------------------------------------------------------------
# a query through secure aggregation


def test_query_begin_through_secure_aggregation_unmasks_the_sum_of_noisy_vectors(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    plan = _plan(nodes[0])
    total, u3, first = _secure_sum(nodes, lambda s: QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan),
                                                               secagg=s, noise_basis=BASIS), threshold=2)
    assert sorted(u3) == sorted(n.executor.node_id for n in nodes)
    assert all(type(r) is QueryBegun for r in first.values())
    noisy = [_expected_noisy(n, plan, 0) for n in nodes]  # each node's first noisy task
    np.testing.assert_array_equal(total, _sum(noisy))
    # The noise-free part: the true totals, within the noise (sigma^2 = 3 * 400/3 per cell).
    exact = decode_totals(plan, _sum([run_local_query(plan, n.manifest, n.manifest.datasets[0]) for n in nodes]))
    released = decode_totals(plan, total)
    for c, cell in enumerate(plan.cells):
        truth = sum(1 for n in nodes for r in n.rows if r["age"] > 30 and r["district"] == cell[0])
        j = plan.measurement_index("count", None)
        assert exact[c][j] == truth
        assert abs(released[c][j] - truth) < 6 * 20  # 6 sigma, sigma = 20
    assert not np.array_equal(total, _sum([run_local_query(plan, n.manifest, n.manifest.datasets[0])
                                           for n in nodes]))
    # Sessions end with Round 4: no input or key is kept.
    assert all(len(n.executor.secagg) == 0 for n in nodes)


def test_a_node_dropping_before_masking_leaves_the_sum_of_the_survivors(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    plan = _plan(nodes[0])
    dropped = nodes[1].executor.node_id
    total, u3, _ = _secure_sum(nodes, lambda s: QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan),
                                                           secagg=s, noise_basis=BASIS), threshold=2, drop_before_masking=(dropped,))
    assert dropped not in u3 and len(u3) == 2
    np.testing.assert_array_equal(total, _sum([_expected_noisy(n, plan, 0) for n in (nodes[0], nodes[2])]))


def test_a_node_that_masks_but_does_not_sign_is_still_in_the_sum(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    plan = _plan(nodes[0])
    silent = nodes[2].executor.node_id
    total, u3, _ = _secure_sum(nodes, lambda s: QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan),
                                                           secagg=s, noise_basis=BASIS), threshold=2,
                               drop_before_signing=(silent,))
    assert silent in u3 and len(u3) == 3
    np.testing.assert_array_equal(total, _sum([_expected_noisy(n, plan, 0) for n in nodes]))
    # The two that answered ended their sessions; the silent one's still waits (until its TTL).
    assert [len(n.executor.secagg) for n in nodes] == [0, 0, 1]


def test_secagg_step_for_another_job_or_session_is_refused(nodes: list[Node]) -> None:
    plan = _plan(nodes[0])
    node = nodes[0]
    ids = [n.executor.node_id for n in nodes]
    session = SecAggSession(session_id="job-1:sum", participants=ids, vector_length=plan.vector_length, threshold=2)
    node.ask(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), secagg=session, noise_basis=BASIS), "job-1")
    for step in (SecAggShareKeys, SecAggMaskedInput, SecAggConsistency, SecAggUnmask):
        for job_id, sid in (("job-2", "job-1:sum"), ("job-1", "job-1:other")):
            header, blobs = encode(step(session_id=sid, secagg=b"x"))
            out = node.executor.handle(step.KIND, job_id, header, blobs)
            assert not out.ok and sid in out.error and job_id in out.error


def test_a_node_signs_one_survivor_set_and_unmasks_only_that_one(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 3 through the executor: a gateway that tells this node another U3 in Round 4 than the
    one it signed, or lists fewer than t signers, gets no share; the genuine request is answered."""
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    plan = _plan(nodes[0])
    ids = [n.executor.node_id for n in nodes]
    by_id = {n.executor.node_id: n for n in nodes}
    sid = "job-1:sum"
    config = SecAggConfig(session_id=sid, participants=ids, vector_length=plan.vector_length, threshold=2)
    session = SecAggSession(session_id=sid, participants=ids, vector_length=plan.vector_length, threshold=2)
    server = SecAggServer(config)
    for u in ids:
        reply = by_id[u].ask(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), secagg=session,
                                        noise_basis=BASIS))
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    server.close_advertise_keys()
    for u in ids:
        reply = by_id[u].ask(SecAggShareKeys(session_id=sid, secagg=server.roster_for(u).encode()))
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    server.close_share_keys()
    for u in ids[:2]:  # ids[2] drops after sharing
        reply = by_id[u].ask(SecAggMaskedInput(session_id=sid, secagg=server.shares_for(u).encode()))
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    check = server.close_masked_input()
    assert check.survivors == tuple(ids[:2])
    a, b = by_id[ids[0]], by_id[ids[1]]

    def refused(node: Node, record: Record) -> str:
        header, blobs = encode(record)
        out = node.executor.handle(record.KIND, "job-1", header, blobs)
        assert not out.ok and out.header == {} and out.blobs == {}
        return out.error

    # No unmasking before the node signed.
    early = UnmaskRequest(config.session_id, check.survivors, dict.fromkeys(check.survivors, b""))
    assert "phase consistency" in refused(a, SecAggUnmask(session_id=sid, secagg=early.encode()))
    for u in ids[:2]:
        reply = by_id[u].ask(SecAggConsistency(session_id=sid, secagg=check.encode()))
        assert isinstance(reply, SecAggMessage)
        server.receive(u, reply.secagg)
    request = server.close_consistency()
    # A second, different survivor set is not signed.
    other = ConsistencyCheck(config.session_id, tuple(ids))
    assert "already signed" in refused(a, SecAggConsistency(session_id=sid, secagg=other.encode()))
    assert set(request.signatures) == set(ids[:2])
    # Round 4 naming ids[2] alive (its b-share instead of its key share): refused.
    swapped = UnmaskRequest(config.session_id, tuple(ids), dict.fromkeys(ids, b""))
    assert "another survivor set" in refused(a, SecAggUnmask(session_id=sid, secagg=swapped.encode()))
    # One signer where t = 2 are needed: refused.
    thin = UnmaskRequest(config.session_id, request.survivors, {ids[0]: b""})
    assert "threshold is 2" in refused(b, SecAggUnmask(session_id=sid, secagg=thin.encode()))


def test_query_begin_refuses_a_session_without_this_node(nodes: list[Node]) -> None:
    plan = _plan(nodes[0])
    session = SecAggSession(session_id="s", participants=["id-a", "id-b"], vector_length=plan.vector_length,
                            threshold=2)
    header, blobs = encode(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), secagg=session, noise_basis=BASIS))
    out = nodes[0].executor.handle("query_begin", "job-1", header, blobs)
    assert not out.ok and "not a participant" in out.error


def test_query_begin_refuses_a_threshold_below_a_majority_or_within_the_collusion_margin(
        nodes: list[Node], tmp_path: Path) -> None:
    plan = _plan(nodes[0])
    node = nodes[0]
    ids = [n.executor.node_id for n in nodes]

    def begin(node: Node, participants: list[str], threshold: int) -> Any:
        session = SecAggSession(session_id="s", participants=participants, vector_length=plan.vector_length,
                                threshold=threshold)
        header, blobs = encode(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), secagg=session,
                                          noise_basis=BASIS))
        return node.executor.handle("query_begin", "job-1", header, blobs)

    # 5 share holders: a majority is 3; t = 2 would let two disjoint pairs each complete a round.
    out = begin(node, [*ids, "id-x", "id-y"], 2)
    assert not out.ok and "too low for 5 share holders" in out.error and "at least 3 (a majority)" in out.error
    assert len(node.executor.secagg) == 0
    # A node that tolerates 2 colluders needs 2t > 3 + 2: it refuses t = 2 (2 of its holders could
    # unmask it, or sign a second survivor set), and takes t = 3.
    d = tmp_path / "margin"
    d.mkdir()
    (d / "patients.csv").write_text((tmp_path / "h0" / "patients.csv").read_text())
    text = MANIFEST.format(node="h0").replace('region = "CN-FJ"', 'region = "CN-FJ"\nmax_colluding_nodes = 2', 1)
    (d / "node.toml").write_text(text)
    cautious = Node("h0", load_manifest(d / "node.toml"), node.rows, TaskExecutor(load_manifest(d / "node.toml")))
    cautious.executor.node_id = ids[0]
    out = begin(cautious, ids, 2)
    assert not out.ok and "at least 3" in out.error and "collusion margin 2" in out.error
    assert "max_colluding_nodes" in out.error
    assert len(cautious.executor.secagg) == 0
    out = begin(cautious, ids, 3)
    assert out.ok, out.error
    assert len(cautious.executor.secagg) == 1


def test_query_begin_refuses_a_negative_noise_scale(nodes: list[Node]) -> None:
    plan = _plan(nodes[0])
    ids = [n.executor.node_id for n in nodes]
    session = SecAggSession(session_id="s", participants=ids, vector_length=plan.vector_length, threshold=2)
    sig = {**_sigmas(plan), "count": Fraction(-1)}
    header, blobs = encode(QueryBegin(plan=plan.to_dict(), sigma_node2=sig, secagg=session, noise_basis=BASIS))
    out = nodes[0].executor.handle("query_begin", "job-1", header, blobs)
    assert not out.ok and "negative" in out.error and "count" in out.error


# ---------------------------------------------------------------------------------------------
# malformed tasks: a failed outcome that names the problem, never an exception


def _valid(kind: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    session = SecAggSession(session_id="s", participants=["id-h0", "id-h1"], vector_length=3, threshold=2)
    records: dict[str, Record] = {
        "validate": Validate(),
        "train_begin": TrainBegin(round=1, epsilon_reserved=0.5, params=b"\x00" * 8, secagg=session),
        "train_eval": TrainEval(params=b"\x00" * 8),
        "secagg_consistency": SecAggConsistency(session_id="s", secagg=b"\x01"),
        "secagg_unmask": SecAggUnmask(session_id="s", secagg=b"\x01"),
    }
    return encode(records[kind])


def _case_unknown_kind() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("validate")
    return "validate_everything", header, blobs, ("unknown task kind", "validate_everything")


def _case_extra_field() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("validate")
    return "validate", {**header, "deep": True}, blobs, ("deep", "Extra inputs")


def _case_true_for_a_number() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("train_begin")
    return "train_begin", {**header, "round": True}, blobs, ("round", "integer")


def _case_true_for_a_float() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("train_begin")
    return "train_begin", {**header, "epsilon_reserved": True}, blobs, ("epsilon_reserved",)


def _case_wrong_version() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("validate")
    return "validate", {**header, "v": 2}, blobs, ("contract version 2",)


def _case_no_version() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("validate")
    return "validate", {k: v for k, v in header.items() if k != "v"}, blobs, ("contract version None",)


def _case_missing_blob() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, _ = _valid("train_eval")
    return "train_eval", header, {}, ("params", "required")


def _case_old_blob_name() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, _ = _valid("train_eval")
    return "train_eval", header, {"global": b"\x00" * 8}, ("global",)


def _case_missing_field() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, blobs = _valid("secagg_unmask")
    return "secagg_unmask", {k: v for k, v in header.items() if k != "session_id"}, blobs, ("session_id",)


def _case_missing_secagg_blob() -> tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]:
    header, _ = _valid("secagg_consistency")
    return "secagg_consistency", header, {}, ("secagg", "required")


@pytest.mark.parametrize("case", [_case_unknown_kind, _case_extra_field, _case_true_for_a_number,
                                  _case_true_for_a_float, _case_wrong_version, _case_no_version,
                                  _case_missing_blob, _case_old_blob_name, _case_missing_field,
                                  _case_missing_secagg_blob],
                         ids=lambda f: f.__name__.removeprefix("_case_"))
def test_malformed_task_gives_a_failed_outcome_naming_the_problem(
        nodes: list[Node], case: Callable[[], tuple[str, dict[str, Any], dict[str, bytes], tuple[str, ...]]]) -> None:
    kind, header, blobs, words = case()
    out = nodes[0].executor.handle(kind, "job-1", header, blobs)
    assert out.ok is False
    for w in words:
        assert w in out.error, out.error
    assert out.header == {} and out.blobs == {}


def test_task_for_unprepared_training_job_is_refused(nodes: list[Node]) -> None:
    header, blobs = encode(TrainEval(params=b"\x00" * 8))
    out = nodes[0].executor.handle("train_eval", "job-x", header, blobs)
    assert not out.ok and "no training state for job job-x" in out.error


# ---------------------------------------------------------------------------------------------
# training: the node holds the gateway to its reservation


def _train_prepare(node: Node, where: str | None = None) -> TrainPrepare:
    from xdp_compute.training import TrainingSpec
    from xdp_compute.training.features import label_of
    from xdp_compute.training.spec import encoded_width

    raw = {"dataset": "patients", "model": "logreg", "features": ["age", "income"], "label": "sick",
           "rounds": 3, "target_epsilon": 3.0, "lr": 1.0}
    spec = TrainingSpec.from_dict(raw)
    columns = [c.to_dict() for c in node.manifest.datasets[0].columns]
    where_plan = None
    if where is not None:
        where_plan = plan_query(f"SELECT COUNT(*) FROM patients WHERE {where}", node.manifest.datasets[0]).to_dict()
    return TrainPrepare(spec=raw, n_features=encoded_width(spec, columns), n_classes=label_of(spec, columns).n_classes,
                        delta=1e-7, where_plan=where_plan)  # below 1/max_rows (default 10^6)


def test_train_round_refuses_a_smaller_reservation_then_runs_with_the_right_one(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    node = nodes[2]
    prep = node.ask(_train_prepare(node))
    assert isinstance(prep, TrainPrepared) and prep.next_cost is not None and prep.rounds_planned == 3
    assert node.ask(_train_prepare(node)) == prep  # asked again: the same state, the same answer
    n_params = 3  # logreg over two features: two weights and a bias
    params = np.zeros(n_params, dtype="<f8").tobytes()
    session = SecAggSession(session_id="job-1:round1", participants=[node.executor.node_id, "id-other"],
                            vector_length=n_params + 1, threshold=2)
    short = TrainBegin(round=1, epsilon_reserved=prep.next_cost * 0.5, params=params, secagg=session)
    header, blobs = encode(short)
    out = node.executor.handle("train_begin", "job-1", header, blobs)
    assert not out.ok and "reserved" in out.error and "not run" in out.error
    assert len(node.executor.secagg) == 0  # nothing started, nothing released
    reply = node.ask(TrainBegin(round=1, epsilon_reserved=prep.next_cost, params=params, secagg=session))
    assert isinstance(reply, TrainRoundBegun)
    assert reply.epsilon_round == pytest.approx(prep.next_cost, abs=1e-9)
    assert reply.epsilon == pytest.approx(reply.epsilon_round)
    assert reply.steps > 0 and reply.next_cost is not None and 0 < reply.next_cost < prep.next_cost
    assert len(node.executor.secagg) == 1
    evaluated = node.ask(TrainEval(params=params))
    assert isinstance(evaluated, TrainEvaluated) and evaluated.epsilon == pytest.approx(reply.epsilon)
    header, blobs = encode(TrainEval(params=params))
    assert not node.executor.handle("train_eval", "job-1", header, blobs).ok  # the job is forgotten


def test_training_rows_are_the_query_pushdown_rows(nodes: list[Node]) -> None:
    from xdp_compute.node.tasks.train import load_rows
    from xdp_compute.training import TrainingSpec

    node = nodes[1]
    ds = node.manifest.datasets[0]
    spec = TrainingSpec.from_dict(_train_prepare(node).spec)
    rows = load_rows(node.executor.node, spec, ds, _train_prepare(node, "age > 30 AND district = 'south'").where_plan)
    want = [r for r in node.rows if r["age"] > 30 and r["district"] == "south"]
    assert 0 < len(want) < len(node.rows)
    assert [int(a) for a in rows["age"]] == [r["age"] for r in want]
    assert [float(x) for x in rows["income"]] == [r["income"] for r in want]
    everything = load_rows(node.executor.node, spec, ds, None)
    assert len(everything["age"]) == len(node.rows) and set(everything) == {"age", "income", "sick"}


def test_rows_sql_selects_declared_columns_only(nodes: list[Node]) -> None:
    import dataclasses

    import sqlglot

    from xdp_compute.errors import InvalidQuery
    from xdp_compute.query.rows import rows_sql

    ds = nodes[0].manifest.datasets[0]
    plan = plan_query("SELECT COUNT(*) FROM patients WHERE age > 3 AND district IN ('north')", ds)
    sql = rows_sql(ds, ["Age", "sick"], '"patients"', "postgres", plan=plan, column_map={"age": "AGE"})
    parsed = sqlglot.parse_one(sql, read="postgres")
    assert [c.name for c in parsed.expressions] == ["AGE", "sick"]  # the source's spelling, in order
    assert parsed.args.get("where") is not None and "'north'" in sql
    assert "SELECT" not in sql.split("FROM", 1)[1]  # one flat SELECT, no subquery
    with pytest.raises(InvalidQuery, match="not declared"):
        rows_sql(ds, ["age", "secret"], '"patients"', "postgres")
    with pytest.raises(InvalidQuery, match="plan is for dataset"):
        rows_sql(dataclasses.replace(ds, name="visits"), ["age"], '"visits"', "postgres", plan=plan)
