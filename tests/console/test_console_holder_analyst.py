"""The holder's and the analyst's console in a real browser against a real gateway and nodes.

A dataset requires its holder's approval: the analyst's query (SDK) waits; the holder signs in to
the console in headless Chromium, reads the pending job's SQL, principal and cost, approves it with
a reason from the keyboard, and the analyst's job is released — then the analyst's console shows the
result with its intervals. A denial with a reason ends the job as denied; a POST without the CSRF
token is refused; a revoked token's session ends on the next page; no page contains the token.
Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import Hospitals, start_hospitals

pytestmark = pytest.mark.slow

SQL = "SELECT clinic, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY clinic"
ANALYST = "ana <script>alert(1)</script>"  # a name with markup: every page must show it as text


@pytest.fixture(scope="module")
def hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("console"), n=2, rows=200, approval={"clinic-0"})
    h.tokens["ana"] = h.cluster.token("analyst", ANALYST)
    yield h
    h.cluster.close()


class Submitted:
    """An analyst's query running in a thread (the SDK waits while the job awaits approval)."""

    def __init__(self, h: Hospitals, analyst: str, epsilon: float = 0.5) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with h.cluster.client(h.tokens[analyst]) as c:
                    self.result = c.query(SQL, epsilon=epsilon, wait=240)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=240)
        assert not self.thread.is_alive(), "the analyst's query did not finish"


def pending_job(h: Hospitals, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    with h.cluster.client(h.tokens["clinic-0"]) as holder:
        while time.monotonic() < deadline:
            waiting = [a for a in holder.approvals() if a.your_decision == "pending"]
            if waiting:
                return str(waiting[-1].job_id)
            time.sleep(0.2)
    raise AssertionError("no job reached the holder's approvals")


def by(css: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def visit(driver: Any, url: str, name: str, shoot: Any, a11y: Any, tokens: list[str]) -> str:
    """Open a page, check it (accessibility, no token, markup shown as text), screenshot it."""
    driver.get(url)
    assert driver.find_elements(*by("main")), driver.page_source[:500]
    problems = a11y(driver)
    assert not problems, (url, problems)
    html = driver.page_source
    for t in tokens:
        assert t not in html, f"{url} contains a token"
    assert not driver.find_elements(*by("main script")), f"{url}: markup from data was executed"
    shoot(driver, name)
    return str(html)


def approve_by_keyboard(driver: Any, job: str, reason: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(*by(f"#approve-reason-{job}"))
    box.click()
    box.send_keys(reason)
    box.send_keys(Keys.TAB)  # to the form's submit button
    focused = driver.switch_to.active_element
    assert focused.text == f"Approve job {job}", focused.text
    focused.send_keys(Keys.ENTER)


def _num2(x: float) -> str:
    """The console's number format (render._num with 2 digits)."""
    from xdp_compute.gateway.console.render import _num

    return _num(x, 2)


def wait_text(driver: Any, css: str, text: str, timeout: float = 30) -> None:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(ec.text_to_be_present_in_element(by(css), text))


def test_holder_approves_in_the_console_and_the_analyst_sees_the_result(
        hs: Hospitals, driver: Any, shoot: Any, signer: Any, a11y: Any) -> None:
    base, tokens = hs.cluster.url, list(hs.tokens.values())
    q = Submitted(hs, "ana")
    job = pending_job(hs)

    signer(driver, base, hs.tokens["clinic-0"])
    visit(driver, f"{base}/console/holder/approvals", "holder-approvals", shoot, a11y, tokens)
    card = driver.find_element(*by(f'section.pending-job[data-job="{job}"]'))
    assert card.find_element(*by("pre.sql")).text == SQL
    assert card.find_element(*by("dd.principal")).text == ANALYST  # shown as text, not markup
    assert "ε 0.5" in card.find_element(*by("dd.cost")).text
    assert "allowed" in card.find_element(*by("ul.decisions")).text
    shoot(driver, "holder-console")  # the README's picture (docs/console-holder.png)

    approve_by_keyboard(driver, job, "fine for the quarterly report")
    wait_text(driver, "main p.flash", f"Approved job {job}; it runs now.")
    q.join()
    assert q.error is None, q.error
    assert q.result.job_id == job and q.result.rows

    driver.refresh()
    row = driver.find_element(*by(f'tr[data-job="{job}"]'))
    assert "fine for the quarterly report" in row.text and "released" in row.text, row.text
    shoot(driver, "holder-approvals-decided")

    visit(driver, f"{base}/console/holder/nodes", "holder-nodes", shoot, a11y, tokens)
    nodes = driver.find_element(*by("main table")).text
    assert "clinic-0" in nodes and "online" in nodes
    assert "clinic-1" not in nodes  # another holder's node

    visit(driver, f"{base}/console/holder/budgets", "holder-budgets", shoot, a11y, tokens)
    spend = driver.find_element(*by("table.per-analyst")).text
    assert ANALYST in spend and re.search(r"\b0\.5\b", spend), spend

    visit(driver, f"{base}/console/holder/jobs", "holder-jobs", shoot, a11y, tokens)
    row = driver.find_element(*by(f'tr[data-job="{job}"]'))
    assert "released" in row.text
    link = next(a for a in row.find_elements(*by("a")) if "released" in a.text)
    link.click()
    wait_text(driver, "h1", "Log entry #")
    assert job in driver.find_element(*by("dl.entry")).text
    assert not a11y(driver)
    shoot(driver, "holder-log-entry")
    driver.find_element(*by("form.signout button")).click()
    wait_text(driver, "main", "You are signed out.")

    signer(driver, base, hs.tokens["ana"])
    visit(driver, f"{base}/console/analyst/jobs", "analyst-jobs", shoot, a11y, tokens)
    driver.find_element(*by(f'tr[data-job="{job}"] a')).click()
    wait_text(driver, "h1", job)
    assert not a11y(driver)
    result = driver.find_element(*by("table.result"))
    cells = result.find_elements(*by("span.interval"))
    assert cells, result.text
    # Every released count is shown with its interval, as the SDK's QueryResult has them.
    for row, iv in zip(q.result.rows, q.result.intervals, strict=True):
        low, high = iv["n"]
        assert f"[{_num2(low)}, {_num2(high)}]" in result.text, (low, high, result.text)
    shoot(driver, "analyst-job-result")
    visit(driver, f"{base}/console/analyst/catalog", "analyst-catalog", shoot, a11y, tokens)
    driver.find_element(*by("main h2 a")).click()
    wait_text(driver, "h1", "Dataset visits")
    assert "synthetic: yes" in driver.find_element(*by("main")).text
    assert len(driver.find_elements(*by("table.mock tbody tr"))) == 10
    shoot(driver, "analyst-dataset-mock")
    visit(driver, f"{base}/console/analyst/budgets", "analyst-budgets", shoot, a11y, tokens)
    assert "clinic-0" in driver.find_element(*by("main")).text


def test_a_denial_with_a_reason_ends_the_job_denied(hs: Hospitals, driver: Any, shoot: Any, signer: Any,
                                                     a11y: Any) -> None:
    base = hs.cluster.url
    q = Submitted(hs, "analyst")
    job = pending_job(hs)
    signer(driver, base, hs.tokens["clinic-0"])
    driver.get(f"{base}/console/holder/approvals")
    box = driver.find_element(*by(f"#deny-reason-{job}"))
    box.send_keys("not for this purpose")
    driver.find_element(*by(f'form[action$="/{job}/deny"] button')).click()
    wait_text(driver, "main p.flash", f"Denied job {job}")
    q.join()
    assert q.error is not None and "not for this purpose" in str(q.error), q.error
    with hs.analyst() as c:
        assert c.job(job).status == "denied"
    row = driver.find_element(*by(f'tr[data-job="{job}"]'))
    assert "denied" in row.text and "not for this purpose" in row.text
    shoot(driver, "holder-approvals-denied")


def _session_cookie(driver: Any) -> dict[str, str]:
    c = driver.get_cookie("xdp_console")
    assert c and c["httpOnly"] and c.get("sameSite") == "Strict", c
    return {"xdp_console": c["value"]}


def test_a_post_without_the_csrf_token_is_refused(hs: Hospitals, driver: Any, shoot: Any, signer: Any) -> None:
    base = hs.cluster.url
    q = Submitted(hs, "analyst")
    job = pending_job(hs)
    signer(driver, base, hs.tokens["clinic-0"])
    cookies = _session_cookie(driver)
    # The same session's cookie, no CSRF field (what a forged cross-site form would send).
    r = httpx.post(f"{base}/console/holder/approvals/{job}/approve", cookies=cookies, data={"reason": "x"})
    assert r.status_code == 403 and "CSRF" in r.text
    # In the browser too: a form whose token was tampered with.
    driver.get(f"{base}/console/holder/approvals")
    driver.execute_script("document.querySelector(arguments[0]).value = 'forged'",
                          f'form[action$="/{job}/approve"] input[name=csrf]')
    driver.find_element(*by(f'form[action$="/{job}/approve"] button')).click()
    wait_text(driver, "h1", "Form refused")
    shoot(driver, "holder-csrf-refused")
    with hs.cluster.client(hs.tokens["clinic-0"]) as holder:
        still = [a for a in holder.approvals() if a.job_id == job]
        assert still and still[0].your_decision == "pending"  # nothing was done
        holder.deny(job, "cleanup")
    q.join()


def test_revoking_the_token_signs_the_session_out_on_the_next_page(hs: Hospitals, driver: Any, shoot: Any,
                                                                    signer: Any, tmp_path: Path) -> None:
    from xdp_compute.gateway.store import Store
    from xdp_compute.gateway.tokens import revoke_token

    base = hs.cluster.url
    token = hs.cluster.token("analyst", "short-lived-analyst")
    signer(driver, base, token)
    driver.get(f"{base}/console/analyst/jobs")
    assert driver.find_element(*by("h1")).text == "Jobs"
    store = Store.open(hs.cluster.db_url, create=False)
    try:
        assert revoke_token(store, "short-lived-analyst")  # what `xdp admin revoke-token` does
    finally:
        store.close()
    driver.get(f"{base}/console/analyst/jobs")
    assert "/console/sign-in" in driver.current_url
    assert "token was revoked or expired" in driver.find_element(*by("main")).text
    shoot(driver, "signed-out-after-revocation")
    # The old cookie is dead for good.
    r = httpx.get(f"{base}/console/analyst/jobs", cookies=_session_cookie(driver) if driver.get_cookie(
        "xdp_console") else {}, follow_redirects=False)
    assert r.status_code == 303


def test_sign_in_page_is_accessible_and_a_wrong_token_says_so(hs: Hospitals, driver: Any, shoot: Any,
                                                               a11y: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    base = hs.cluster.url
    driver.get(f"{base}/console/sign-in")
    assert not a11y(driver)
    shoot(driver, "sign-in")
    field = driver.find_element(*by("#token"))
    field.send_keys("xdp_wrong", Keys.ENTER)
    wait_text(driver, "main", "Not signed in: unknown token.")
    assert "xdp_wrong" not in driver.page_source and "xdp_wrong" not in driver.current_url


def test_dataset_spend_is_for_its_owner_members_and_auditors(hs: Hospitals) -> None:
    """GET /v1/datasets/{name}/spend, which the holder's budgets page shows: the owner sees every
    node's ledger and each analyst's spend; a member only its own nodes; analysts are refused."""
    base = hs.cluster.url

    def get(token: str, name: str = "visits") -> httpx.Response:
        return httpx.get(f"{base}/v1/datasets/{name}/spend", headers={"authorization": f"Bearer {token}"})

    q = Submitted(hs, "ana", epsilon=0.25)  # one released job, approved through the SDK
    job = pending_job(hs)
    with hs.cluster.client(hs.tokens["clinic-0"]) as holder:
        holder.approve(job)
    q.join()
    assert q.error is None, q.error
    owner = get(hs.tokens["clinic-0"])
    assert owner.status_code == 200, owner.text
    body = owner.json()
    assert body["dataset"] == "visits" and {n["node"] for n in body["nodes"]} == {"clinic-0", "clinic-1"}
    spent = body["analysts"][ANALYST]
    # The ε the job spent (the noise floor may lower it a hair below the 0.25 asked for).
    assert spent["released"] >= 1 and spent["epsilon_spent"] > 0.2
    for n in body["nodes"]:
        assert n["epsilon_left"] == pytest.approx(n["epsilon_budget"] - n["epsilon_spent"] - n["epsilon_reserved"])
    member = get(hs.tokens["clinic-1"]).json()
    assert [n["node"] for n in member["nodes"]] == ["clinic-1"]
    assert get(hs.tokens["auditor"]).status_code == 200
    assert get(hs.tokens["analyst"]).status_code == 403
    missing = get(hs.tokens["clinic-0"], "no-such-dataset")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
