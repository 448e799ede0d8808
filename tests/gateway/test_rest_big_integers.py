"""Integers beyond 64 bits on the audit routes are a 422, never a 500 (issue #12 item 7)."""

from __future__ import annotations

from typing import Any

import pytest

HUGE = str(2**63)


@pytest.mark.parametrize("path", [
    f"/v1/audit/entries/{HUGE}", f"/v1/audit/entries?start={HUGE}", f"/v1/audit/heads?start={HUGE}",
    f"/v1/audit/proof/inclusion?index={HUGE}", f"/v1/audit/proof/inclusion?index=0&size={HUGE}",
    f"/v1/audit/proof/consistency?first={HUGE}", f"/v1/audit/proof/consistency?first=1&second={HUGE}",
    f"/v1/audit/entries/{'9' * 40}",
])
def test_huge_integers_are_422(api: Any, store: Any, path: str) -> None:
    token = store.create_principal("auditor", "au", "CN-FJ")
    r = api.get(path, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 422, (path, r.status_code, r.text)


def test_a_holder_asking_for_a_huge_start_gets_422(api: Any, store: Any) -> None:
    token = store.create_principal("holder", "h", "CN-FJ")
    r = api.get(f"/v1/nodes/log-entries?start={HUGE}", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 422, r.text
