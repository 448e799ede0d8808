"""The gateway image carries no torch, Opacus, scikit-learn or TenSEAL (Dockerfile target
``gateway``, issue #14): a gateway process that cannot import them serves plain and Paillier
encrypted queries from real nodes (which have them), and the SDK verifies the receipt.

The modules are made unimportable in the gateway process only, by a ``sitecustomize`` on its
PYTHONPATH that refuses them and leaves a marker file proving it ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Hospitals, start_hospitals, truth

from xdp_compute import Client

pytestmark = pytest.mark.slow
SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total FROM visits GROUP BY clinic"
# What the gateway image leaves out (Dockerfile, stage build-gateway).
ABSENT = ("torch", "opacus", "sklearn", "tenseal")

SITECUSTOMIZE = '''
import importlib.abc
import sys
from pathlib import Path

ABSENT = {absent!r}


class _NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            Path({tried!r}).open("a").write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the gateway image)", name=name)
        return None


sys.meta_path.insert(0, _NotInImage())
Path({marker!r}).write_text("active")
'''


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hospitals, Path]]:
    hooks = tmp_path_factory.mktemp("image")
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE.format(
        absent=set(ABSENT), tried=str(hooks / "tried.txt"), marker=str(hooks / "marker.txt")))
    h = start_hospitals(tmp_path_factory.mktemp("lean"), n=3, rows=200,
                        gateway_env={"PYTHONPATH": str(hooks)})
    try:
        yield h, hooks
    finally:
        h.cluster.close()


def test_a_gateway_without_the_ml_and_ckks_libraries_serves_plain_and_encrypted_queries(
        lean: tuple[Hospitals, Path], tmp_path: Path) -> None:
    h, hooks = lean
    assert (hooks / "marker.txt").read_text() == "active"  # the gateway ran with the modules refused
    a = Client(h.cluster.url, h.tokens["analyst"], key_dir=str(tmp_path / "keys"))
    plain = a.query(SQL, epsilon=2.0)
    enc = a.query(SQL, epsilon=2.0, encrypt=True)
    exact = truth(h.files)
    for r in (plain, enc):
        assert sorted(row["clinic"] for row in r.rows) == sorted(exact)
        for row, iv in zip(r.rows, r.intervals, strict=True):
            assert abs(row["n"] - exact[row["clinic"]]["n"]) <= 3 * (iv["n"][1] - iv["n"][0])
    assert a.verify_receipt(enc)
    tried = (hooks / "tried.txt").read_text().split() if (hooks / "tried.txt").exists() else []
    assert tried == [], f"the gateway tried to import {sorted(set(tried))}"
    assert h.cluster.procs["gateway"].alive()
