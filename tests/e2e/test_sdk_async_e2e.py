"""The SDK's two clients against a real gateway and real nodes: the async one answers what the sync
one does, typed records on both sides, the DataFrame of a released answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute import errors as E
from xdp_compute.contract import api as A
from xdp_compute.sdk.client import AsyncClient, Client
from xdp_compute.sdk.results import QueryResult

SQL = "SELECT clinic, COUNT(*) AS n, AVG(cost) AS mean FROM visits GROUP BY clinic"


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("sdk"), n=3, rows=200)
    try:
        yield h
    finally:
        h.cluster.close()


def both(h: Hospitals, role: str, sync: Any, run_async: Any) -> tuple[Any, Any]:
    """``sync(Client)`` and ``await run_async(AsyncClient)`` for the same principal."""
    token = h.tokens[role]
    with Client(h.cluster.url, token) as c:
        got_sync = sync(c)

    async def go() -> Any:
        async with AsyncClient(h.cluster.url, token) as ac:
            return await run_async(ac)

    return got_sync, asyncio.run(go())


@pytest.mark.slow
def test_async_client_runs_the_same_query_as_the_sync_one(hospitals: Hospitals) -> None:
    # The same idempotency key: the async client must read the very answer the sync one got.
    r_sync, r_async = both(hospitals, "analyst",
                           lambda c: c.query(SQL, epsilon=1.0, idempotency_key="sdk-e2e-1"),
                           lambda ac: ac.query(SQL, epsilon=1.0, idempotency_key="sdk-e2e-1"))
    assert isinstance(r_sync, QueryResult) and isinstance(r_async, QueryResult)
    assert r_async.job_id == r_sync.job_id and r_async.rows == r_sync.rows
    assert r_async.intervals == r_sync.intervals and r_async.columns == ["clinic", "n", "mean"]
    assert [row["clinic"] for row in r_sync.rows] == ["north", "south", "east"]

    # A fresh query through the async client is released and its receipt verifies.
    async def fresh(ac: AsyncClient) -> Any:
        return await ac.query(SQL, epsilon=0.5)

    _, r_new = both(hospitals, "analyst", lambda c: None, fresh)
    assert r_new.job_id != r_sync.job_id and len(r_new.rows) == 3
    with Client(hospitals.cluster.url, hospitals.tokens["analyst"]) as c:
        assert c.verify_receipt(r_new)
        frame = r_sync.to_pandas(intervals=True)
        assert frame["clinic"].tolist() == ["north", "south", "east"]
        assert {"n_low", "n_high", "mean_low", "mean_high"} <= set(frame.columns)

    # Reads agree too, as typed records.
    plan_sync, plan_async = both(hospitals, "analyst", lambda c: c.query(SQL, epsilon=1.0, dry_run=True),
                                 lambda ac: ac.query(SQL, epsilon=1.0, dry_run=True))
    assert isinstance(plan_async, A.DryRun) and plan_async.plan["digest"] == plan_sync.plan["digest"]
    jobs_sync, jobs_async = both(hospitals, "analyst", lambda c: c.jobs(limit=10), lambda ac: ac.jobs(limit=10))
    assert isinstance(jobs_async, A.JobPage) and jobs_async == jobs_sync
    assert [j.job_id for j in jobs_sync.jobs][:2] == [r_new.job_id, r_sync.job_id]
    budget_sync, budget_async = both(hospitals, "analyst", lambda c: c.budget("visits"),
                                     lambda ac: ac.budget("visits"))
    assert isinstance(budget_async, A.Budget) and budget_async == budget_sync
    entries_sync, entries_async = both(hospitals, "auditor", lambda c: c.audit_entries(kind="released"),
                                       lambda ac: ac.audit_entries(kind="released"))
    assert entries_async == entries_sync
    assert {e.job_id for e in entries_sync} >= {r_sync.job_id, r_new.job_id}


@pytest.mark.slow
def test_typed_errors_from_a_real_gateway(hospitals: Hospitals) -> None:
    async def denied(ac: AsyncClient) -> Any:
        with pytest.raises(E.Forbidden) as err:
            await ac.audit_entries()
        return err.value

    with Client(hospitals.cluster.url, hospitals.tokens["analyst"]) as c, pytest.raises(E.Forbidden) as err:
        c.audit_entries()
    _, async_err = both(hospitals, "analyst", lambda c: None, denied)
    assert err.value.problem["status"] == async_err.problem["status"] == 403
    assert err.value.problem["type"] == async_err.problem["type"]
    with Client(hospitals.cluster.url, "xdp_not-a-token") as c, pytest.raises(E.Unauthorized):
        c.me()
