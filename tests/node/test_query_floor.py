"""The plain query's data step overlaps secure aggregation's setup (issue #13, goal 1).

Round 0 (``query_begin``) answers with the node's keys once its checks and its charge are done;
the rows are read and the noise drawn in the background; Round 2 (masked input) waits for the
vector. A data step that fails makes Round 2 fail, and the gateway's driver then counts that
node as a refusal (``secure_sum(..., late_input=True)``), exactly as one refusing Round 0 with an
error: an abort is charged and names nobody. Policy refusals stay in Round 0, before a row is read.

In-process executors play the nodes, as in ``test_node_tasks``; a small hub hands the gateway's
driver (``gateway.secure_sum``) to them, so the rounds run as over gRPC minus the transport.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_node_tasks import BASIS, SEED, Node, _expected_noisy, _node, _plan, _sigmas, _sum

import xdp_compute.node.tasks.query as query_task
from xdp_compute.contract import (
    QueryBegin,
    QueryBegun,
    Record,
    SecAggMaskedInput,
    SecAggSession,
    decode_reply,
    encode,
)
from xdp_compute.errors import ProtocolAborted
from xdp_compute.gateway.hub import NodeFailed
from xdp_compute.gateway.secure_sum import secure_sum
from xdp_compute.node.sources import SourceError
from xdp_compute.query import QueryPlan

WAIT = 30.0  # seconds a test waits for a thread before failing (never a timing assertion)


@pytest.fixture
def nodes(tmp_path: Path) -> list[Node]:
    return [_node(tmp_path, f"h{i}", 60 + 20 * i, seed=i) for i in range(3)]


class LocalHub:
    """The gateway's task hub over in-process executors: ``ask`` runs the task in a thread."""

    def __init__(self, nodes: list[Node], before: Callable[[str, Record], None] | None = None) -> None:
        self.by_id = {n.executor.node_id: n for n in nodes}
        self.before = before or (lambda node, request: None)

    async def ask(self, node_id: str, job_id: str, request: Record, timeout: float) -> Record:
        def run() -> Record:
            self.before(node_id, request)
            header, blobs = encode(request)
            out = self.by_id[node_id].executor.handle(request.KIND, job_id, header, blobs)
            if not out.ok:
                raise NodeFailed(out.error)
            return decode_reply(request.KIND, out.header, out.blobs)

        return await asyncio.wait_for(asyncio.to_thread(run), timeout)


def _begin(plan: QueryPlan, sigmas: dict[str, Fraction] | None = None) -> Callable[[str, SecAggSession], Record]:
    return lambda node, s: QueryBegin(plan=plan.to_dict(), sigma_node2=sigmas or _sigmas(plan), secagg=s,
                                      noise_basis=BASIS)


def _run(hub: LocalHub, nodes: list[Node], begin: Callable[[str, SecAggSession], Record], *,
         late_input: bool = True, job_id: str = "job-1") -> Any:
    ids = [n.executor.node_id for n in nodes]
    return asyncio.run(secure_sum(hub, job_id, f"{job_id}:sum", ids,  # type: ignore[arg-type]
                                  _plan(nodes[0]).vector_length, begin, threshold=2, round_timeout=WAIT,
                                  begin_timeout=WAIT, late_input=late_input))


def _gate_data_steps(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Hold every data step until the returned event is set; the list records finished steps."""
    release, done = threading.Event(), []
    real = query_task.run_checked_query

    def held(plan: QueryPlan, manifest: Any, ds: Any, **kw: Any) -> np.ndarray:
        assert release.wait(WAIT), "the test never released the data step"
        out = real(plan, manifest, ds, **kw)
        done.append(manifest.node_name)
        return out

    monkeypatch.setattr(query_task, "run_checked_query", held)
    return release, done


def test_round_0_answers_with_keys_and_a_durable_charge_before_any_row_is_read(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    release, done = _gate_data_steps(monkeypatch)
    plan = _plan(nodes[0])
    seen_before_masking: list[tuple[str, int, int]] = []

    def before(node: str, request: Record) -> None:
        if isinstance(request, SecAggMaskedInput) and not release.is_set():
            # Every node has answered Rounds 0 and 1 while no data step has read a row; each
            # node's own journal already holds the job's charge.
            for n in nodes:
                seen_before_masking.append((n.name, len(done), len(n.executor.node.ledger.entries())))
            release.set()

    res = _run(LocalHub(nodes, before), nodes, _begin(plan))
    assert seen_before_masking and all(d == 0 and charged == 1 for _, d, charged in seen_before_masking)
    assert all(type(r) is QueryBegun for r in res.first_replies.values())
    assert sorted(done) == sorted(n.name for n in nodes)
    # The sum is exactly the three noisy vectors the nodes would have computed in Round 0.
    np.testing.assert_array_equal(res.total, _sum([_expected_noisy(n, plan, 0) for n in nodes]))
    assert not res.refused and not res.dropped
    assert all(len(n.executor.secagg) == 0 for n in nodes)


def _failing_data_step(monkeypatch: pytest.MonkeyPatch, failing: set[str]) -> None:
    real = query_task.run_checked_query

    def step(plan: QueryPlan, manifest: Any, ds: Any, **kw: Any) -> np.ndarray:
        if manifest.node_name in failing:
            raise SourceError(f"dataset '{ds.name}': the csv source could not be read (InvalidInputException)")
        return real(plan, manifest, ds, **kw)

    monkeypatch.setattr(query_task, "run_checked_query", step)


def test_a_failed_data_step_is_a_refusal_in_round_2_and_its_session_ends(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    _failing_data_step(monkeypatch, {"h2"})
    plan = _plan(nodes[0])
    res = _run(LocalHub(nodes), nodes, _begin(plan))
    bad = nodes[2].executor.node_id
    # Not a silent drop-out: the driver records the node's error, as one in Round 0.
    assert set(res.refused) == {bad} and "could not be read" in res.refused[bad]
    assert res.dropped == {bad: "masked_input"}
    assert sorted(res.survivors) == sorted(n.executor.node_id for n in nodes[:2])
    np.testing.assert_array_equal(res.total, _sum([_expected_noisy(n, plan, 0) for n in nodes[:2]]))
    # The failing node was charged in Round 0 (it accepted the task) and keeps no session.
    assert [e.job_id for e in nodes[2].executor.node.ledger.entries()] == ["job-1"]
    assert all(len(n.executor.secagg) == 0 for n in nodes)


def test_failed_data_steps_below_the_threshold_abort_with_node_errors(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_data_step(monkeypatch, {"h1", "h2"})
    with pytest.raises(ProtocolAborted) as e:
        _run(LocalHub(nodes), nodes, _begin(_plan(nodes[0])))
    # ``QueryService.aborted`` charges an abort whose node_errors are not empty.
    assert set(e.value.node_errors) == {nodes[1].executor.node_id, nodes[2].executor.node_id}  # type: ignore[attr-defined]


def test_without_late_input_an_error_in_round_2_stays_a_drop_out(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """Training's rounds compute their input in Round 0: a later error is no data step's."""
    _failing_data_step(monkeypatch, {"h2"})
    res = _run(LocalHub(nodes), nodes, _begin(_plan(nodes[0])), late_input=False)
    assert not res.refused and res.dropped == {nodes[2].executor.node_id: "masked_input"}


def test_policy_refusals_stay_in_round_0_before_any_row_is_read(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = query_task.run_checked_query

    def step(plan: QueryPlan, manifest: Any, ds: Any, **kw: Any) -> np.ndarray:
        read.append(manifest.node_name)
        return real(plan, manifest, ds, **kw)

    monkeypatch.setattr(query_task, "run_checked_query", step)
    plan = _plan(nodes[0])
    too_little = {k: v / 4 for k, v in _sigmas(plan).items()}
    with pytest.raises(ProtocolAborted) as e:
        _run(LocalHub(nodes), nodes, _begin(plan, too_little))
    errors = e.value.node_errors  # type: ignore[attr-defined]
    assert len(errors) == 3 and all("too little noise" in v for v in errors.values())
    assert read == []  # no data step was started
    assert all(n.executor.node.ledger.entries() == [] for n in nodes)



def test_the_charge_is_on_disk_before_the_data_step_reads_a_row(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    from xdp_compute.node.ledger import NodeLedger

    events: list[tuple[str, str]] = []
    real_read, real_sync = query_task.run_checked_query, NodeLedger.sync

    def read(plan: QueryPlan, manifest: Any, ds: Any, **kw: Any) -> np.ndarray:
        events.append(("read", manifest.node_name))
        return real_read(plan, manifest, ds, **kw)

    def sync(self: NodeLedger) -> None:
        real_sync(self)
        events.append(("sync", self.path.parent.name))

    monkeypatch.setattr(query_task, "run_checked_query", read)
    monkeypatch.setattr(NodeLedger, "sync", sync)
    _run(LocalHub(nodes), nodes, _begin(_plan(nodes[0])))
    for n in nodes:
        mine = [kind for kind, who in events if who == n.name]
        assert mine == ["sync", "read"], events


def test_a_validated_plan_is_remembered_and_a_refused_one_is_refused_every_time(nodes: list[Node]) -> None:
    from dataclasses import replace

    from xdp_compute.errors import InvalidQuery
    from xdp_compute.query import validate_plan_for

    ds = nodes[0].manifest.datasets[0]
    plan = _plan(nodes[0])
    first = query_task.validated_plan(plan, ds)
    assert first.to_dict() == validate_plan_for(plan, ds).to_dict()
    assert query_task.validated_plan(plan, ds) is first  # remembered
    # The same plan against another dataset object is derived again: tighter bounds there refuse it.
    cols = tuple(replace(c, max=500.0) if c.name == "income" else c for c in ds.columns)
    tighter = replace(ds, columns=cols)
    for _ in range(2):
        with pytest.raises(InvalidQuery, match="income"):
            query_task.validated_plan(plan, tighter)


def test_a_session_whose_vector_differs_from_the_plan_is_refused_before_any_row_is_read(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    monkeypatch.setattr(query_task, "run_checked_query", lambda *a, **k: read.append("read"))
    plan = _plan(nodes[0])
    ex = nodes[0].executor
    session = SecAggSession(session_id="job-1:sum", participants=[ex.node_id, "id-x", "id-y"],
                            vector_length=plan.vector_length + 1, threshold=2)
    header, blobs = encode(_begin(plan)(ex.node_id, session))
    out = ex.handle(QueryBegin.KIND, "job-1", header, blobs)
    assert not out.ok and "vector length" in out.error
    assert read == [] and len(ex.secagg) == 0


# ---------------------------------------------------------------- the encrypted query (Paillier)
def _sealed_run(hub: LocalHub, nodes: list[Node], public: Any) -> Any:
    """The gateway's sealed driver (``encrypted_secure_sum``) over the in-process nodes."""
    from xdp_compute.crypto.paillier import ring_scheme
    from xdp_compute.gateway.encrypted_sum import SealedSession, encrypted_secure_sum
    from xdp_compute.query.sealed import revealed_slots

    plan = _plan(nodes[0])
    scheme = ring_scheme(public.bits)
    ids = [n.executor.node_id for n in nodes]

    def begin(node: str, s: SecAggSession) -> Record:
        from xdp_compute.contract import HeQueryBegin

        return HeQueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), public_key=public.to_dict(),
                            scheme=scheme.to_dict(), secagg=s, noise_basis=BASIS)

    sealed = SealedSession(public, scheme, revealed_slots(plan), 1 << 22)
    return asyncio.run(encrypted_secure_sum(hub, "job-1", "job-1:sealed", ids,  # type: ignore[arg-type]
                                            plan.vector_length, sealed, begin, threshold=2,
                                            round_timeout=WAIT, begin_timeout=WAIT))


@pytest.fixture(scope="module")
def paillier_keys() -> Any:
    paillier = pytest.importorskip("xdp_compute.crypto.paillier")
    return paillier.generate_keypair(2048)


@pytest.fixture
def he_nodes(nodes: list[Node]) -> list[Node]:
    yield nodes
    for n in nodes:
        n.executor.close()  # the obfuscator pools' background processes


def test_encrypted_query_answers_round_0_before_any_row_is_read_and_sums_the_same(
        he_nodes: list[Node], paillier_keys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #13: the encrypted query's data step overlaps the setup rounds too."""
    from xdp_compute.contract import HeQueryBegun, HeQueryMaskedInput
    from xdp_compute.crypto.paillier import aggregate_encrypted, decrypt_ring_sum, unmask_sealed_sum

    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    release, done = _gate_data_steps(monkeypatch)
    nodes, (public, private) = he_nodes, paillier_keys
    seen: list[tuple[int, int]] = []
    answered_round_0: list[str] = []
    real_ask = LocalHub.ask

    def before(node: str, request: Record) -> None:
        if isinstance(request, HeQueryMaskedInput) and not release.is_set():
            seen.extend((len(done), len(n.executor.node.ledger.entries())) for n in nodes)
            release.set()

    hub = LocalHub(nodes, before)

    async def ask(self: LocalHub, node_id: str, job_id: str, request: Record, timeout: float) -> Record:
        reply = await real_ask(self, node_id, job_id, request, timeout)
        if isinstance(reply, HeQueryBegun):
            answered_round_0.append(node_id)
        return reply

    monkeypatch.setattr(LocalHub, "ask", ask)
    res = _sealed_run(hub, nodes, public)
    # Every node answered Rounds 0 and 1 with no row read, its charge already journaled.
    assert len(answered_round_0) == 3 and seen and all(d == 0 and charged == 1 for d, charged in seen)
    assert sorted(done) == sorted(n.name for n in nodes)
    plan = _plan(nodes[0])
    total = unmask_sealed_sum(public, aggregate_encrypted(public, [res.sealed_sum]), res.mask_total)
    expected = _sum([_expected_noisy(n, plan, 0) for n in nodes])
    assert decrypt_ring_sum(private, total) == [int(x) for x in expected]
    assert not res.refused and not res.dropped


def test_encrypted_query_a_failed_data_step_is_a_refusal_in_round_2(
        he_nodes: list[Node], paillier_keys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a silent drop-out: its error may depend on the rows, so an abort it causes is charged
    (``QueryService.aborted`` reads ``node_errors``), as on the plain path."""
    _failing_data_step(monkeypatch, {"h1", "h2"})
    nodes, (public, _) = he_nodes, paillier_keys
    with pytest.raises(ProtocolAborted) as e:
        _sealed_run(LocalHub(nodes), nodes, public)
    errors = e.value.node_errors  # type: ignore[attr-defined]
    assert set(errors) == {nodes[1].executor.node_id, nodes[2].executor.node_id}
    assert all("could not be read" in v for v in errors.values())
    assert all(len(n.executor.secagg) == 0 for n in nodes[1:])  # the failed sessions ended
