"""The SDK without a gateway: arguments refused before sending, typed errors, from_env, to_pandas.

Requests go to an httpx ``MockTransport``; where nothing may be sent, its handler fails the test.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from xdp_compute import errors as E
from xdp_compute.contract import api as A
from xdp_compute.sdk.client import AsyncClient, Client
from xdp_compute.sdk.results import QueryResult, query_result

URL = "http://127.0.0.1:9"


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing may be sent, but {request.method} {request.url} was")


def answering(status: int, body: Any, seen: list[httpx.Request] | None = None,
              content_type: str = "application/json") -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, content=json.dumps(body).encode(), headers={"content-type": content_type})

    return handle


BAD_CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("nan", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=float("nan")), "epsilon"),
    ("inf", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=math.inf), "epsilon"),
    ("zero", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=0), "epsilon"),
    ("negative", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=-1.0), "epsilon"),
    ("string", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon="1"), "epsilon"),
    ("bool", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=True), "epsilon"),
    ("delta 0", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=1.0, delta=0.0), "delta"),
    ("delta 1", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=1.0, delta=1.0), "delta"),
    ("delta str", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=1.0, delta="1e-6"), "delta"),
    ("empty sql", lambda c: c.query("  ", epsilon=1.0), "sql"),
    ("sql None", lambda c: c.query(None, epsilon=1.0), "sql"),
    ("level", lambda c: c.query("SELECT COUNT(*) FROM t", epsilon=1.0, level=95), "level"),
    ("submit nan", lambda c: c.submit_query("SELECT COUNT(*) FROM t", epsilon=float("nan")), "epsilon"),
    ("jobs limit", lambda c: c.jobs(limit=0), "limit"),
    ("jobs status", lambda c: c.jobs(status="done"), "status"),
    ("mock rows", lambda c: c.mock("t", rows=10**6), "rows"),
    ("entries since", lambda c: c.audit_entries(since=float("nan")), "since"),
    ("empty job id", lambda c: c.job(""), "path segment"),
    ("deny reason", lambda c: c.deny("j1", ""), "reason"),
]


@pytest.mark.parametrize("name, call, word", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_invalid_arguments_are_refused_before_sending(name: str, call: Callable[[Any], Any], word: str) -> None:
    with Client(URL, "tok", transport=httpx.MockTransport(never_called)) as c, \
            pytest.raises(E.InvalidArgument) as err:
        call(c)
    assert isinstance(err.value, ValueError) and isinstance(err.value, E.XdpError)
    assert word in str(err.value) and err.value.status == 400
    assert err.value.problem["type"].endswith("/invalid-argument")


@pytest.mark.parametrize("name, call, word", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_async_invalid_arguments_are_refused_before_sending(name: str, call: Callable[[Any], Any],
                                                            word: str) -> None:
    async def run() -> None:
        async with AsyncClient(URL, "tok", transport=httpx.MockTransport(never_called)) as c:
            with pytest.raises(E.InvalidArgument, match=word):
                await call(c)

    asyncio.run(run())


def test_refused_connection_is_gateway_unreachable_with_problem_attribute() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", "tok") as c, pytest.raises(E.GatewayUnreachable) as err:
        c.me()
    assert not isinstance(err.value, E.GatewayTimeout)
    assert err.value.status == 503 and f"127.0.0.1:{port}" in str(err.value)
    problem = err.value.problem  # an attribute holding a dict, not a method
    assert isinstance(problem, dict) and problem["type"].endswith("/gateway-unreachable")
    assert problem["status"] == 503 and problem["detail"] == str(err.value)


def test_a_stalled_gateway_is_gateway_timeout(stalled_port: int) -> None:
    with Client(f"http://127.0.0.1:{stalled_port}", "tok", timeout=0.3) as c, \
            pytest.raises(E.GatewayTimeout) as err:
        c.me()
    assert isinstance(err.value, E.GatewayUnreachable) and err.value.status == 504
    assert "did not answer" in str(err.value)

    async def run() -> None:
        async with AsyncClient(f"http://127.0.0.1:{stalled_port}", "tok", timeout=0.3) as ac:
            with pytest.raises(E.GatewayTimeout):
                await ac.me()

    asyncio.run(run())


def test_problem_answers_raise_their_class_with_the_body() -> None:
    body = {"type": "https://xdp-compute.dev/problems/budget-exhausted", "title": "Privacy budget exhausted",
            "status": 403, "detail": "node a has 0.1 left", "instance": "/v1/queries", "job_id": None}
    problem = answering(403, body, content_type="application/problem+json")
    with Client(URL, "tok", transport=httpx.MockTransport(problem)) as c, \
            pytest.raises(E.BudgetExhausted) as err:
        c.query("SELECT COUNT(*) FROM t", epsilon=1.0)
    assert err.value.problem == body and err.value.detail == "node a has 0.1 left"


def test_answers_are_typed_records_that_still_read_like_dicts() -> None:
    seen: list[httpx.Request] = []
    page = {"jobs": [{"job_id": "j2", "status": "released", "operation": "query", "created_at": 2.0,
                      "updated_at": 3.0, "cost": {"epsilon": 1.0}, "added_later": True}], "next_before": "j2"}
    with Client(URL, "tok", transport=httpx.MockTransport(answering(200, page, seen))) as c:
        got = c.jobs(status="released", limit=1, before="j9")
    assert isinstance(got, A.JobPage) and isinstance(got.jobs[0], A.JobSummary)
    assert got.jobs[0].cost == {"epsilon": 1.0} and got["next_before"] == "j2"
    assert got.jobs[0]["added_later"] is True  # a member a newer gateway adds is kept
    assert got.model_dump(mode="json") == page
    assert dict(seen[0].url.params) == {"status": "released", "limit": "1", "before": "j9"}
    assert seen[0].headers["authorization"] == "Bearer tok"


def test_from_env_reads_url_token_file_and_refuses_without_url(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.delenv("XDP_URL", raising=False)
    monkeypatch.delenv("XDP_TOKEN", raising=False)
    with pytest.raises(E.InvalidArgument, match="XDP_URL"):
        Client.from_env()
    (tmp_path / "tok").write_text("xdp_from-a-file\n")
    monkeypatch.setenv("XDP_URL", "http://127.0.0.1:8000/")
    monkeypatch.setenv("XDP_TOKEN_FILE", str(tmp_path / "tok"))
    seen: list[httpx.Request] = []
    me = {"id": "p1", "name": "ana", "role": "analyst", "region": "CN-FJ"}
    with Client.from_env(transport=httpx.MockTransport(answering(200, me, seen))) as c:
        assert c.url == "http://127.0.0.1:8000" and c.me().role == "analyst"
    assert seen[0].headers["authorization"] == "Bearer xdp_from-a-file"
    ac = AsyncClient.from_env()
    assert isinstance(ac, AsyncClient)
    asyncio.run(ac.aclose())


DELIVERY = {"job_id": "j1", "status": "released", "operation": "query", "log_index": 4,
            "budget_left": {"a": 9.0}, "cost": {"epsilon": 1.0},
            "result": {"columns": ["clinic", "n"], "rows": [{"clinic": "north", "n": 12.0},
                                                            {"clinic": "east", "n": None}],
                       "intervals": [{"n": [10.0, 14.0]}, {"n": None}], "epsilon": 1.0, "delta": 1e-6,
                       "level": 0.95, "nodes": ["a"]}}


def test_to_pandas_rows_and_intervals() -> None:
    pd = pytest.importorskip("pandas")
    r: QueryResult = query_result(DELIVERY)
    df = r.to_pandas()
    assert list(df.columns) == ["clinic", "n"] and df["clinic"].tolist() == ["north", "east"]
    assert df["n"].iloc[0] == 12.0 and pd.isna(df["n"].iloc[1])
    wide = r.to_pandas(intervals=True)
    assert list(wide.columns) == ["clinic", "n", "n_low", "n_high"]
    assert wide["n_low"].iloc[0] == 10.0 and pd.isna(wide["n_high"].iloc[1])
    assert df.attrs["epsilon"] == 1.0 and df.attrs["job_id"] == "j1"


def test_to_pandas_names_the_extra_when_pandas_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match=r"xdp-compute\[pandas\]"):
        query_result(DELIVERY).to_pandas()


def test_query_waits_for_approval_then_returns_the_release() -> None:
    answers = iter([(202, {"job_id": "j1", "status": "awaiting_approval"}),
                    (200, {"job_id": "j1", "status": "awaiting_approval", "operation": "query", "created_at": 1.0}),
                    (200, {**DELIVERY, "created_at": 1.0})])
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        status, body = next(answers)
        return httpx.Response(status, json=body)

    async def run() -> QueryResult:
        answers_async = iter([(202, {"job_id": "j1", "status": "awaiting_approval"}), (200, {**DELIVERY})])

        def handle_async(request: httpx.Request) -> httpx.Response:
            status, body = next(answers_async)
            return httpx.Response(status, json=body)

        async with AsyncClient(URL, "tok", transport=httpx.MockTransport(handle_async)) as ac:
            return await ac.query("SELECT COUNT(*) FROM t", epsilon=1.0)  # type: ignore[return-value]

    with Client(URL, "tok", transport=httpx.MockTransport(handle)) as c:
        r = c.query("SELECT COUNT(*) FROM t", epsilon=1.0)
    assert seen == ["POST /v1/queries", "GET /v1/jobs/j1", "GET /v1/jobs/j1"]
    assert isinstance(r, QueryResult) and r.job_id == "j1" and r.rows[0]["n"] == 12.0
    ra = asyncio.run(run())
    assert ra.rows == r.rows and ra.intervals == r.intervals


def test_encrypted_delivery_is_refused_by_the_async_client() -> None:
    async def run() -> None:
        async with AsyncClient(URL, "tok", transport=httpx.MockTransport(never_called)) as ac:
            with pytest.raises(E.InvalidArgument, match="blocking Client"):
                await ac.query("SELECT COUNT(*) FROM t", epsilon=1.0, encrypt=True)

    asyncio.run(run())
