"""A private join attacked by its analyst over raw REST (issue #16): a gateway and two holders' nodes
as real processes (the fixture of test_private_join_e2e).

The analyst crafts what the SDK never sends: Paillier keys that would let someone decrypt without
the secret or make the noise wrap (tiny n, a prime n, n with a small factor, a short n), edge
values of epsilon, delta and the interval level, and SQL that reads a join key through an
aggregate, a DISTINCT, a GROUP BY or a WHERE. Each is refused with a 4xx problem (never a 500)
before anything is charged: the holders' ledgers are unchanged.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from test_private_join_e2e import COUNT, Joined, joined, public_key  # noqa: F401 - module fixtures

pytestmark = pytest.mark.slow



def _post(j: Joined, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{j.cluster.url}/v1/queries", json=body,
                      headers={"Authorization": f"Bearer {j.tokens['analyst']}"}, timeout=120)


def _spent(j: Joined) -> Any:
    """Both datasets' budgets per node: spent and reserved epsilon and delta."""
    out = []
    for ds in ("hospital", "insurer"):
        r = httpx.get(f"{j.cluster.url}/v1/budget/{ds}",
                      headers={"Authorization": f"Bearer {j.tokens['analyst']}"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        out.append([(n["epsilon_spent"], n["epsilon_reserved"], n["delta_spent"]) for n in body["nodes"]])
        out.append([body["analyst"]])
    assert all(out)
    return out


@pytest.mark.parametrize("n, words", [
    ("15", "bits"),                           # tiny: anyone factors it, noise added mod n wraps
    (str(2**2203 - 1), "prime"),              # a Mersenne prime: phi(n) = n - 1 is public
    (str(3 * (2**2203 - 1)), "small factor"),
    (str(((1 << 2100) + 1155) * 7919), "small factor"),
    (str((2**1279 - 1) * (2**607 - 1)), "bits"),  # n = pq, but 1886 bits: below the minimum
    ("-23", "bits"),
    ("0x", "integer"),
])
def test_a_crafted_paillier_key_is_refused_before_anything_is_charged(joined: Joined, n: str,  # noqa: F811
                                                                       words: str) -> None:
    before = _spent(joined)
    r = _post(joined, {"sql": COUNT, "epsilon": 1.0, "public_key": {"scheme": "paillier", "n": n}})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert words in r.json()["detail"], r.json()["detail"]
    assert _spent(joined) == before


def test_a_key_with_another_generator_or_members_is_refused(joined: Joined,  # noqa: F811
                                                           public_key: dict[str, Any]) -> None:  # noqa: F811
    for key in ({**public_key, "g": "2"}, {**public_key, "bits": 4096}, {**public_key, "fingerprint": "00"},
                {**public_key, "scheme": "rsa"}, "not-an-object"):
        r = _post(joined, {"sql": COUNT, "epsilon": 1.0, "public_key": key})
        assert r.status_code in (400, 422) and r.status_code != 500, (key, r.text)


@pytest.mark.parametrize("field, value", [
    ("epsilon", 0), ("epsilon", -1.0), ("epsilon", 1e308), ("epsilon", "1"), ("delta", 0), ("delta", 1.0),
    ("delta", -1e-9), ("level", 0.0), ("level", 1.0), ("level", 2.0),
])
def test_edge_values_of_epsilon_delta_and_level_are_4xx(joined: Joined, public_key: dict[str, Any],  # noqa: F811
                                                      field: str, value: Any) -> None:
    before = _spent(joined)
    r = _post(joined, {"sql": COUNT, "epsilon": 1.0, "public_key": public_key, field: value})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert _spent(joined) == before


@pytest.mark.parametrize("sql", [
    "SELECT SUM(h.citizen) FROM hospital h JOIN insurer i ON h.citizen = i.citizen",
    "SELECT COUNT(DISTINCT h.citizen) FROM hospital h JOIN insurer i ON h.citizen = i.citizen",
    "SELECT COUNT(DISTINCT i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen",
    "SELECT h.citizen, COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY h.citizen",
    "SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE i.citizen = 'C0700000001'",
    "SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE i.phone LIKE '+86%'",
    "SELECT i.phone, COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY i.phone",
    "SELECT MAX(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen",
    "SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen OR h.age = 3",
    "SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen AND h.age = i.claim",
    "SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE h.age = i.claim",
    "SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY h.age",
])
def test_sql_reading_a_key_or_undeclared_uses_through_the_join_is_refused(joined: Joined,  # noqa: F811
                                                                         public_key: dict[str, Any],  # noqa: F811
                                                                         sql: str) -> None:
    r = _post(joined, {"sql": sql, "epsilon": 1.0, "public_key": public_key})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
