"""The auditor's console in a real browser against a real gateway and nodes.

Two hospitals, a few released queries; the auditor signs in to the console in headless Chromium,
opens the release log, filters it by kind, opens an entry and sees its inclusion proof "verified"
by merkle.js in the browser (the root the page computed equals the signed root the REST API
serves); the metering charts have one point per release and one bar per kind. Then one stored
entry is edited in the gateway's SQLite database while it runs: the entry page says FAILED at
RFC 9162 §2.1.3.2 step 5, and verifying the whole log from the checkpoint saved before lists the
edit. Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from xdp_compute.errors import PolicyDenied

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import Hospitals, start_hospitals

pytestmark = pytest.mark.slow

QUERIES = [
    "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic",
    "SELECT clinic, AVG(cost) AS avg_cost FROM visits GROUP BY clinic",
    "SELECT COUNT(*) AS n FROM visits WHERE age >= 50",
]


@pytest.fixture(scope="module")
def hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("audit-console"), n=2, rows=200)
    with h.analyst() as c:
        for sql in QUERIES:
            assert c.query(sql, epsilon=0.5, wait=120).rows  # released (a refusal raises)
        with pytest.raises(PolicyDenied):  # logged as denied: a second kind to filter out
            c.query(QUERIES[0], epsilon=5000.0, wait=120)
    yield h
    h.cluster.close()


def rest(h: Hospitals, path: str, **params: Any) -> Any:
    r = httpx.get(h.cluster.url + path, params=params, headers={"authorization": f"Bearer {h.tokens['auditor']}"},
                  timeout=30)
    r.raise_for_status()
    return r.json()


def by(css: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def click_and_load(driver: Any, element: Any) -> None:
    """Click a link or submit button and wait until the next page has replaced this one."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(*by("html"))
    element.click()
    WebDriverWait(driver, 30).until(ec.staleness_of(page))


def proof_verdict(driver: Any) -> Any:
    """The entry page's verdict element once merkle.js has finished (verified or failed)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(*by("#proof-status")).get_attribute("data-state") != "pending")
    return driver.find_element(*by("#proof-status"))


def test_auditor_filters_the_log_and_an_entry_is_verified_in_the_browser(
        hs: Hospitals, driver: Any, signer: Any, shoot: Any, a11y: Any) -> None:
    from selenium.webdriver.support.ui import Select

    base = hs.cluster.url
    signer(driver, base, hs.tokens["auditor"])
    assert driver.current_url.endswith("/console/audit/log")
    assert a11y(driver) == []
    kinds = {r.get_attribute("data-kind") for r in driver.find_elements(*by("#log-entries tbody tr"))}
    assert kinds == {"released", "denied"}, kinds
    shoot(driver, "audit-log")

    Select(driver.find_element(*by("#f-kind"))).select_by_value("released")
    click_and_load(driver, driver.find_element(*by("form.filters button[type=submit]")))
    rows = driver.find_elements(*by("#log-entries tbody tr"))
    assert [r.get_attribute("data-kind") for r in rows] == ["released"] * len(QUERIES)
    assert "kind=released" in driver.current_url and hs.tokens["auditor"] not in driver.page_source
    shoot(driver, "audit-log-released")

    click_and_load(driver, rows[-1].find_element(*by("a")))
    status = proof_verdict(driver)
    assert status.text.startswith("verified: entry #"), status.text
    assert status.get_attribute("data-state") == "verified"
    assert status.get_attribute("data-signature-checked-by") == "browser"  # WebCrypto Ed25519
    # The JS really ran: the root it computed is the signed root of that size, as REST serves it.
    size = int(status.get_attribute("data-tree-size"))
    signed = next(h for h in rest(hs, "/v1/audit/heads", start=size) if h["tree_size"] == size)
    assert status.get_attribute("data-computed-root") == signed["root_hash"]
    assert a11y(driver) == []
    shoot(driver, "audit-entry-verified")


def test_metering_charts_have_a_point_per_release_and_a_bar_per_kind(
        hs: Hospitals, driver: Any, signer: Any, shoot: Any, a11y: Any) -> None:
    signer(driver, hs.cluster.url, hs.tokens["auditor"])
    driver.get(hs.cluster.url + "/console/audit/metering")
    with hs.cluster.client(hs.tokens["auditor"]) as auditor:
        series = auditor.metering_series()  # the SDK's record of GET /v1/metering/series
    track = driver.find_element(*by('section.track[data-side="analyst"][data-name="analyst"]'))
    assert len(track.find_elements(*by("svg.chart-line circle.point"))) == len(QUERIES)
    assert len(series["per_analyst"]["analyst"]["epsilon_over_time"]) == len(QUERIES)
    bars = track.find_elements(*by("svg.chart-bars rect.bar"))
    assert len(bars) == len(series["per_analyst"]["analyst"]["jobs_by_kind"]) >= 1
    for svg in track.find_elements(*by("svg")):
        assert svg.get_attribute("role") == "img"
        assert svg.find_elements(*by("title")) and svg.find_elements(*by("desc"))
    visits = driver.find_element(*by('section.track[data-side="dataset"][data-name="visits"]'))
    assert len(visits.find_elements(*by("svg.chart-line circle.point"))) == len(QUERIES)
    assert a11y(driver) == []
    shoot(driver, "audit-metering")


# Makes this browser's WebCrypto refuse Ed25519, as an older browser would.
NO_ED25519 = """
const importKey = crypto.subtle.importKey.bind(crypto.subtle);
crypto.subtle.importKey = function (format, key, algorithm, ...rest) {
  if ((algorithm && (algorithm.name || algorithm)) === "Ed25519") {
    return Promise.reject(new DOMException("Ed25519 is not supported", "NotSupportedError"));
  }
  return importKey(format, key, algorithm, ...rest);
};
"""


def test_without_webcrypto_ed25519_the_page_says_the_gateway_checked_the_signature(
        hs: Hospitals, driver: Any, signer: Any, shoot: Any) -> None:
    signer(driver, hs.cluster.url, hs.tokens["auditor"])
    script = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": NO_ED25519})
    try:
        driver.get(hs.cluster.url + "/console/audit/entries/0")
        status = proof_verdict(driver)
        assert status.get_attribute("data-state") == "verified", status.text
        assert status.get_attribute("data-signature-checked-by") == "gateway"
        steps = driver.find_element(*by("#proof-steps")).text
        assert "checked by the gateway (this browser's WebCrypto has no Ed25519): verified" in steps
        shoot(driver, "audit-entry-gateway-signature")
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


def test_an_edited_entry_fails_in_the_browser_and_in_the_whole_log_check(
        hs: Hospitals, driver: Any, signer: Any, shoot: Any, a11y: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    base = hs.cluster.url
    signer(driver, base, hs.tokens["auditor"])

    # A checkpoint of the intact log, saved through the page (the file input loads it into the form).
    driver.get(base + "/console/audit/verify")
    assert a11y(driver) == []
    click_and_load(driver, driver.find_element(*by("main form button[type=submit]")))
    assert driver.find_element(*by("#verify-verdict")).get_attribute("data-state") == "verified"
    saved = json.loads(driver.find_element(*by("#new-checkpoint")).text)
    shoot(driver, "audit-verify-verified")
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text(json.dumps(saved))

    # An operator with write access edits a released entry while the gateway runs.
    target = rest(hs, "/v1/audit/entries", kind="released")[0]["index"]
    with sqlite3.connect(hs.cluster.root / "gateway.db") as db:
        (text,) = db.execute("SELECT entry_json FROM log_entries WHERE idx = ?", (target,)).fetchone()
        edited = text.replace('"principal":"analyst"', '"principal":"someone-else"')
        assert edited != text
        db.execute("UPDATE log_entries SET entry_json = ? WHERE idx = ?", (edited, target))

    driver.get(f"{base}/console/audit/entries/{target}")
    status = proof_verdict(driver)
    assert status.get_attribute("data-state") == "failed"
    assert status.text.startswith("FAILED: RFC 9162 §2.1.3.2 step 5"), status.text
    assert status.get_attribute("data-computed-root") != status.get_attribute("data-head-root")
    assert "someone-else" in driver.find_element(*by("dl.entry")).text  # the page shows what is served
    shoot(driver, "audit-entry-failed")

    driver.get(base + "/console/audit/verify")
    driver.find_element(*by("#checkpoint-file")).send_keys(str(checkpoint))
    WebDriverWait(driver, 10).until(lambda d: d.find_element(*by("#checkpoint")).get_attribute("value").strip())
    assert json.loads(driver.find_element(*by("#checkpoint")).get_attribute("value")) == saved
    click_and_load(driver, driver.find_element(*by("main form button[type=submit]")))
    verdict = driver.find_element(*by("#verify-verdict"))
    assert verdict.get_attribute("data-state") == "failed" and verdict.text.startswith("FAILED")
    assert f"first bad entry #{target}" in verdict.text
    roots = driver.find_element(*by('#verify-checks tr[data-check="roots"]'))
    assert roots.get_attribute("data-result") == "failed"
    assert f"edited entry: entry {target} was changed" in roots.text
    assert driver.find_element(*by('#verify-checks tr[data-check="checkpoint"]')).get_attribute("data-result") == "failed"
    assert not driver.find_elements(*by("#new-checkpoint"))  # a failed log is never checkpointed
    shoot(driver, "audit-verify-failed")
