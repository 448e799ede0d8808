"""The console's sign-in, session, CSRF and escaping, in process (no browser): what the browser
tests rely on, checked where a failure names its cause."""

from __future__ import annotations

import re
from typing import Any

import pytest

from xdp_compute.gateway.console.session import COOKIE, SIGNIN_COOKIE

SCRIPT = "<script>alert(1)</script>"


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the form"
    return m.group(1)


def sign_in(api: Any, token: str) -> Any:
    page = api.get("/console/sign-in")
    return api.post("/console/sign-in", data={"csrf": _csrf(page.text), "token": token}, follow_redirects=False)


@pytest.fixture
def analyst(store: Any) -> str:
    return str(store.create_principal("analyst", f"ana {SCRIPT}", "CN-FJ"))


def test_sign_in_keeps_the_token_server_side_in_an_httponly_strict_cookie(api: Any, analyst: str) -> None:
    r = sign_in(api, analyst)
    assert r.status_code == 303 and r.headers["location"].endswith("/console/analyst/catalog")
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert analyst not in cookie and analyst not in r.headers.get("location", "")
    for path in ("/console/analyst/catalog", "/console/analyst/budgets", "/console/analyst/jobs"):
        page = api.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert analyst not in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        # Autoescaped: the principal's name is shown, its markup is not executed.
        assert SCRIPT not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert page.text.count("<main") == 1 and "<h1" in page.text


def test_a_wrong_token_is_refused_with_a_message_and_no_session(api: Any) -> None:
    r = sign_in(api, "xdp_not-a-token")
    assert r.status_code == 401 and "Not signed in: unknown token." in r.text
    assert not [h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "=")]
    assert api.get("/console/analyst/catalog", follow_redirects=False).headers["location"].endswith("/sign-in")


def test_sign_in_without_its_form_token_is_refused(api: Any, analyst: str) -> None:
    api.get("/console/sign-in")
    r = api.post("/console/sign-in", data={"token": analyst}, follow_redirects=False)
    assert r.status_code == 403 and not [h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "=")]


def test_a_post_without_the_sessions_csrf_token_does_nothing(api: Any, store: Any) -> None:
    holder = store.create_principal("holder", "h1", "CN-FJ")
    assert sign_in(api, holder).status_code == 303
    r = api.post("/console/sign-out", data={}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = api.post("/console/sign-out", data={"csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    assert api.get("/console/holder/nodes").status_code == 200  # still signed in: nothing was done
    r = api.post("/console/sign-out", data={"csrf": _csrf(api.get("/console/holder/nodes").text)},
                 follow_redirects=False)
    assert r.status_code == 303
    assert api.get("/console/holder/nodes", follow_redirects=False).status_code == 303  # the session is gone


def test_revoking_the_token_ends_the_session_on_the_next_request(api: Any, store: Any, analyst: str) -> None:
    from xdp_compute.gateway.tokens import revoke_token

    assert sign_in(api, analyst).status_code == 303
    assert api.get("/console/analyst/jobs").status_code == 200
    assert revoke_token(store, f"ana {SCRIPT}")
    r = api.get("/console/analyst/jobs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/sign-in?ended=ended")
    assert api.get("/console/analyst/jobs", follow_redirects=False).status_code == 303  # not back after


def test_pages_of_another_role_and_unknown_pages_are_clear_4xx(api: Any, analyst: str) -> None:
    sign_in(api, analyst)
    r = api.get("/console/holder/approvals")
    assert r.status_code == 403 and "for holders" in r.text and "<main" in r.text
    assert api.get("/console/analyst/jobs/nope").status_code == 404
    assert api.get("/console/analyst/catalog/nope").status_code == 404
    r = api.post("/console/holder/approvals/x/approve", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code in (400, 403)


def test_console_routes_stay_out_of_the_rest_api_document(api: Any) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/console")]
    assert "/v1/datasets/{name}/spend" in paths


def test_the_console_root_leads_to_sign_in_then_to_the_roles_first_page(api: Any, store: Any) -> None:
    r = api.get("/console", follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/console/sign-in" and 'id="token"' in r.text
    holder = store.create_principal("holder", "h2", "CN-FJ")
    sign_in(api, holder)
    r = api.get("/console/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/holder/approvals"
    css = api.get("/console/static/console.css")
    assert css.status_code == 200 and ":focus-visible" in css.text


def test_signing_in_again_replaces_the_old_session(api: Any, store: Any, analyst: str) -> None:
    sign_in(api, analyst)
    old = api.cookies.get(COOKIE)
    sign_in(api, analyst)
    assert api.cookies.get(COOKIE) != old
    new = api.cookies.get(COOKIE)
    api.cookies.clear()
    api.cookies.set(COOKIE, old)
    assert api.get("/console/analyst/jobs", follow_redirects=False).status_code == 303
    api.cookies.clear()
    api.cookies.set(COOKIE, new)
    assert api.get("/console/analyst/jobs", follow_redirects=False).status_code == 200


def test_the_session_cookie_is_secure_when_the_gateway_serves_tls(store: Any, tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from xdp_compute.config import Settings
    from xdp_compute.gateway.app import create_app
    from xdp_compute.gateway.services import Services

    settings = Settings(db_url="sqlite://", tls_cert=str(tmp_path / "gw.pem"), tls_key=str(tmp_path / "gw.key"))
    svc = Services(settings=settings, store=store)
    token = store.create_principal("holder", "h-tls", "CN-FJ")
    # Plain http here: the gateway's own TLS settings alone make the cookies Secure.
    with TestClient(create_app(settings, svc), base_url="http://testserver") as c:
        page = c.get("/console/sign-in")
        assert "Secure" in next(h for h in page.headers.get_list("set-cookie") if h.startswith(SIGNIN_COOKIE))
    with TestClient(create_app(settings, svc), base_url="https://testserver") as c:
        r = sign_in(c, token)
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
        assert r.status_code == 303 and "Secure" in cookie and "HttpOnly" in cookie
