"""The node's content commitment (issue #17): keyed, order-free, sensitive to any change, key kept 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from xdp_compute.contract.tasks import Commit
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.errors import BadRequest
from xdp_compute.node.tasks.commit import commit, commitment_key, content_commitment
from xdp_compute.node.tasks.context import NodeContext

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"
state_dir = "state"

[[datasets]]
name = "visits"
source = "visits.csv"
classification = "internal"
categories = []
epsilon_budget = 10
delta = 1e-5
min_group_size = 5

[datasets.columns]
clinic = { type = "category", values = ["north", "south"], uses = ["group"] }
age    = { type = "int", min = 0, max = 100, uses = ["aggregate"] }
"""


def test_the_commitment_is_keyed_order_free_and_binds_every_row() -> None:
    key, other = b"k" * 32, b"o" * 32
    rows = [("north", "30"), ("south", None), ("north", "31")]
    c = content_commitment(key, rows)
    assert c == content_commitment(key, list(reversed(rows)))           # file order does not matter
    assert c != content_commitment(other, rows)                         # another key: unrelated value
    assert c != content_commitment(key, [("north", "30"), ("south", None), ("north", "32")])
    assert c != content_commitment(key, rows[:2])                       # a row dropped
    assert c != content_commitment(key, [("north", "30"), ("south", "None"), ("north", "31")])  # NULL is not text
    # Length prefixes: the same characters split into other rows encode differently.
    assert content_commitment(key, [("ab",), ("c",)]) != content_commitment(key, [("a",), ("bc",)])


def test_the_node_commits_to_its_own_rows_with_a_private_key(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(MANIFEST)
    csv = tmp_path / "visits.csv"
    csv.write_text("clinic,age\nnorth,30\nsouth,41\nnorth,52\n")
    node = NodeContext(load_manifest(tmp_path / "node.toml"))
    first = commit(node, "", Commit(dataset="visits"))
    assert commit(node, "", Commit(dataset="VISITS")).commitment == first.commitment  # same rows, same key
    csv.write_text("clinic,age\nnorth,52\nnorth,30\nsouth,41\n")                        # reordered
    assert commit(node, "", Commit(dataset="visits")).commitment == first.commitment
    csv.write_text("clinic,age\nnorth,30\nsouth,42\nnorth,52\n")                        # one value changed
    assert commit(node, "", Commit(dataset="visits")).commitment != first.commitment
    keys = list(node.manifest.state_path.glob("commitment-*.key"))
    assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600 and len(keys[0].read_bytes()) == 32
    assert commitment_key(node.manifest.state_path, "visits") == keys[0].read_bytes()
    with pytest.raises(BadRequest, match="no dataset"):
        commit(node, "", Commit(dataset="other"))
