"""The auditor's console pages in process (no browser): the log's filters and paging, the entry
page's evidence endpoints, the whole-log verification with a checkpoint, the metering charts, and
GET /v1/metering/series behind them. Bad input gets a 4xx page saying what was wrong."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from xdp_compute.audit import hash_leaf, verify_inclusion
from xdp_compute.audit.heads import SignedTreeHead, verify_tree_head

SCRIPT = "<script>alert(1)</script>"


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the form"
    return m.group(1)


def _sign_in(api: Any, token: str) -> None:
    page = api.get("/console/sign-in")
    r = api.post("/console/sign-in", data={"csrf": _csrf(page.text), "token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text[:300]


@pytest.fixture
def world(api: Any, store: Any) -> dict[str, Any]:
    """An auditor, and a log of 7 entries: 4 released (two analysts, two datasets), 2 denied, 1 approval."""
    svc = api.app.state.services
    entries = [
        ("released", "ana", ["visits"], 0.5), ("released", "bob", ["visits", "labs"], 0.25),
        ("denied", "ana", ["visits"], 1.0), ("released", "ana", ["labs"], 0.125),
        ("approval_given", "holder-1", ["visits"], None), ("denied", f"eve {SCRIPT}", ["visits"], 2.0),
        ("released", "ana", ["visits"], 0.5),
    ]
    for i, (kind, who, datasets, eps) in enumerate(entries):
        svc.gate.record({"kind": kind, "job_id": f"job-{i}", "principal": who, "operation": "sql",
                         "datasets": datasets, "privacy_cost": {"epsilon": eps, "delta": 0.0} if eps else {},
                         "payload_digest": "ab" * 32})
    auditor = str(store.create_principal("auditor", "city-auditor", "CN-FJ"))
    _sign_in(api, auditor)
    return {"auditor": auditor, "n": len(entries)}


def test_metering_series_rest(api: Any, world: dict[str, Any]) -> None:
    r = api.get("/v1/metering/series", headers={"authorization": f"Bearer {world['auditor']}"})
    assert r.status_code == 200, r.text
    body = r.json()
    ana = body["per_analyst"]["ana"]
    assert [p["epsilon"] for p in ana["epsilon_over_time"]] == [0.5, 0.625, 1.125]  # cumulative, released only
    assert [p["index"] for p in ana["epsilon_over_time"]] == [0, 3, 6]
    assert ana["jobs_by_kind"] == {"released": 3, "denied": 1}
    assert body["per_dataset"]["labs"]["jobs_by_kind"] == {"released": 2}
    assert "holder-1" not in body["per_analyst"]  # an approval is not a metered job


def test_log_page_filters_and_pages(api: Any, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    page = api.get("/console/audit/log", params={"kind": "denied"})
    assert page.status_code == 200
    kinds = re.findall(r'<tr data-kind="([a-z_]+)"', page.text)
    assert kinds == ["denied", "denied"]
    assert SCRIPT not in page.text and "eve &lt;script&gt;" in page.text
    assert re.findall(r'href="/console/audit/entries/(\d+)"', page.text) == ["2", "5"]
    by_principal = api.get("/console/audit/log", params={"principal": "bob"}).text
    assert len(re.findall(r"<tr data-kind", by_principal)) == 1
    by_dataset = api.get("/console/audit/log", params={"dataset": "labs"}).text
    assert re.findall(r'href="/console/audit/entries/(\d+)"', by_dataset) == ["1", "3"]
    future = api.get("/console/audit/log", params={"since": "2999-01-01T00:00"}).text
    assert 'id="log-empty"' in future
    # Paging: with 3 to a page, the next link starts after the last index shown.
    from xdp_compute.gateway.console import audit

    monkeypatch.setattr(audit, "PAGE", 3)
    first = api.get("/console/audit/log").text
    assert re.findall(r'href="/console/audit/entries/(\d+)"', first) == ["0", "1", "2"]
    nxt = re.search(r'id="next-page" rel="next" href="([^"]+)"', first)
    assert nxt and "start=3" in nxt.group(1)
    second = api.get(nxt.group(1).replace("&amp;", "&")).text
    assert re.findall(r'href="/console/audit/entries/(\d+)"', second) == ["3", "4", "5"]


def test_bad_filter_input_is_a_4xx_page(api: Any, world: dict[str, Any]) -> None:
    r = api.get("/console/audit/log", params={"since": "yesterday"})
    assert r.status_code == 400 and "from: &#39;yesterday&#39; is not a date and time" in r.text
    assert api.get("/console/audit/log", params={"start": "-1"}).status_code == 422
    assert api.get("/console/audit/entries/99").status_code == 404
    assert api.get("/console/audit/api/inclusion", params={"index": 5, "size": 99}).status_code == 400


def test_entry_evidence_is_what_the_tree_committed_to(api: Any, world: dict[str, Any]) -> None:
    page = api.get("/console/audit/entries/3")
    assert page.status_code == 200 and 'id="proof-status"' in page.text
    assert "/static/merkle.js" in page.text and "<script>" not in page.text  # CSP: no inline script
    head = api.get("/console/audit/api/head").json()
    sth = SignedTreeHead.from_dict(head["signed_tree_head"])
    verify_tree_head(sth, bytes.fromhex(head["public_key"]))
    assert head["gateway_signature_check"] == "verified" and sth.tree_size == world["n"]
    proof = api.get("/console/audit/api/inclusion", params={"index": 3, "size": sth.tree_size}).json()
    leaf = api.get("/console/audit/entries/3/leaf")
    assert leaf.headers["content-type"] == "application/octet-stream"
    verify_inclusion(hash_leaf(leaf.content), 3, sth.tree_size, [bytes.fromhex(p) for p in proof["proof"]],
                     sth.root_hash)


def _verify(api: Any, checkpoint: str) -> Any:
    form = api.get("/console/audit/verify")
    return api.post("/console/audit/verify", data={"csrf": _csrf(form.text), "checkpoint": checkpoint})


def _checks(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-check="([a-z]+)" data-result="([a-z]+)"', html))


def test_verify_with_a_checkpoint_then_an_edited_entry_fails(api: Any, world: dict[str, Any]) -> None:
    first = _verify(api, "")
    assert first.status_code == 200 and 'data-state="verified"' in first.text
    assert _checks(first.text)["checkpoint"] == "skipped"
    saved = re.search(r'<pre id="new-checkpoint">(.*?)</pre>', first.text, re.DOTALL)
    assert saved
    checkpoint = json.loads(saved.group(1).replace("&#34;", '"').replace("&quot;", '"'))
    assert checkpoint["tree_size"] == world["n"]

    ok = _verify(api, json.dumps(checkpoint))
    assert 'data-state="verified"' in ok.text
    assert set(_checks(ok.text).values()) == {"passed"}

    # The C2SP note of GET /v1/audit/checkpoint is accepted too.
    note = api.get("/v1/audit/checkpoint", headers={"authorization": f"Bearer {world['auditor']}"}).text
    assert 'data-state="verified"' in _verify(api, note).text

    # Edit entry 2 in the database, as an operator with write access could.
    store = api.app.state.services.store
    with store.write() as s:
        from xdp_compute.gateway import models as m

        row = s.get(m.LogEntry, 2)
        row.entry_json = row.entry_json.replace('"denied"', '"released"')
    bad = _verify(api, json.dumps(checkpoint))
    assert 'data-state="failed"' in bad.text
    checks = _checks(bad.text)
    assert checks["roots"] == "failed" and checks["checkpoint"] == "failed", checks
    assert "edited entry: entry 2 was changed" in bad.text
    assert "first bad entry #2" in bad.text


def test_verify_refuses_a_malformed_checkpoint_with_a_message(api: Any, world: dict[str, Any]) -> None:
    r = _verify(api, "{not json")
    assert r.status_code == 400 and "checkpoint: not valid JSON" in r.text
    r = _verify(api, '{"tree_size": 3}')
    assert r.status_code == 400 and "checkpoint: lacks key_id, public_key, root_hash" in r.text
    r = _verify(api, "hello")
    assert r.status_code == 400 and "neither the JSON" in r.text
    form = api.get("/console/audit/verify")
    assert api.post("/console/audit/verify", data={"checkpoint": ""}).status_code == 403  # no CSRF token
    assert form.status_code == 200


def test_metering_page_draws_one_point_per_release_and_one_bar_per_kind(api: Any, world: dict[str, Any]) -> None:
    page = api.get("/console/audit/metering")
    assert page.status_code == 200
    sections = re.findall(r'<section class="card track" data-side="(\w+)" data-name="([^"]*)"(.*?)</section>',
                          page.text, re.DOTALL)
    by = {(side, name): body for side, name, body in sections}
    ana = by[("analyst", "ana")]
    assert ana.count('class="point"') == 3 and ana.count('class="bar"') == 2
    assert "<title" in ana and "<desc" in ana and "<table>" in ana
    visits = by[("dataset", "visits")]
    assert visits.count('class="point"') == 3 and visits.count('class="bar"') == 2
    assert SCRIPT not in page.text


def test_other_roles_cannot_open_auditor_pages(api: Any, world: dict[str, Any], store: Any) -> None:
    api.cookies.clear()
    _sign_in(api, str(store.create_principal("analyst", "ana", "CN-FJ")))
    for path in ("/console/audit/log", "/console/audit/entries/0", "/console/audit/api/head",
                 "/console/audit/entries/0/leaf", "/console/audit/metering"):
        assert api.get(path).status_code == 403, path
