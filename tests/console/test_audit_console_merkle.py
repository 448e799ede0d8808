"""merkle.js in a real Chromium against vectors computed by audit/merkle.py and audit/heads.py.

The console's entry page checks inclusion proofs and signed tree heads in the auditor's browser;
this pins the JavaScript to the Python implementation: every leaf of trees of 1..17 leaves, and
each way a proof or head can be wrong, must get the same verdict (and for failures the same
RFC 9162 §2.1.3.2 step) on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xdp_compute.audit.heads import TreeHeadSigner
from xdp_compute.audit.merkle import MerkleTree, hash_leaf, verify_inclusion
from xdp_compute.errors import ProofError

MERKLE_JS = Path(__file__).resolve().parents[2] / "src/xdp_compute/gateway/console/static/merkle.js"

# Runs every vector in the page and hands the verdicts back to Selenium.
RUNNER = """
const done = arguments[arguments.length - 1];
const M = window.XdpMerkle, hex = M.hexToBytes;
(async () => {
  const out = {inclusion: [], heads: [], ed25519: await M.ed25519Supported()};
  for (const v of window.VECTORS.inclusion) {
    try {
      const leafHash = await M.hashLeaf(new TextEncoder().encode(v.leaf));
      const root = await M.verifyInclusion(leafHash, v.index, v.size, v.proof.map(hex), hex(v.root));
      out.inclusion.push({ok: true, root: M.bytesToHex(root)});
    } catch (e) {
      out.inclusion.push({ok: false, step: e.step || String(e), message: e.message});
    }
  }
  for (const v of window.VECTORS.heads) {
    try { await M.verifyTreeHead(v.head, v.key); out.heads.push({ok: true}); }
    catch (e) { out.heads.push({ok: false, step: e.step || String(e)}); }
  }
  return out;
})().then(done, (e) => done({error: String(e)}));
"""


def _python_verdict(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> tuple[bool, str]:
    try:
        verify_inclusion(hash_leaf(leaf), index, size, proof, root)
    except ProofError as e:
        return False, e.detail
    return True, ""


def _vectors() -> tuple[dict[str, Any], list[tuple[bool, str | None]]]:
    """Inclusion cases with the Python verdict and the step merkle.js must name when failing."""
    leaves = [json.dumps({"index": i, "kind": "released", "note": "é"}, sort_keys=True).encode()
              for i in range(17)]
    tree = MerkleTree.from_leaves(leaves)
    cases: list[dict[str, Any]] = []
    expected: list[tuple[bool, str | None]] = []

    def add(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes, step: str | None) -> None:
        ok, _ = _python_verdict(leaf, index, size, proof, root)
        assert ok == (step is None), (index, size, step)
        cases.append({"leaf": leaf.decode(), "index": index, "size": size,
                      "proof": [p.hex() for p in proof], "root": root.hex()})
        expected.append((ok, step))

    for size in range(1, 18):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            add(leaves[index], index, size, proof, root, None)
            # An edited leaf: the recomputed root differs (step 5).
            add(leaves[index] + b" ", index, size, proof, root, "RFC 9162 §2.1.3.2 step 5")
        if size > 1:
            proof = tree.inclusion_proof(size - 1, size)
            add(leaves[size - 1], size - 1, size, proof[:-1], root, "RFC 9162 §2.1.3.2 step 5")  # too short
            add(leaves[size - 1], size - 1, size, [*proof, proof[0]], root, "RFC 9162 §2.1.3.2 step 4a")
            add(leaves[0], 0, size, tree.inclusion_proof(1, size), root, "RFC 9162 §2.1.3.2 step 5")  # wrong leaf
    add(leaves[3], 3, 3, tree.inclusion_proof(2, 3), tree.root(3), "RFC 9162 §2.1.3.2 step 1")

    signer, other = TreeHeadSigner.generate(), TreeHeadSigner.generate()
    head = signer.sign(17, tree.root(17)).to_dict()
    key = signer.public_key_bytes().hex()
    heads = [
        ({"head": head, "key": key}, None),
        ({"head": {**head, "timestamp_ms": head["timestamp_ms"] + 1}, "key": key}, "tree head signature"),
        ({"head": {**head, "root_hash": tree.root(16).hex()}, "key": key}, "tree head signature"),
        ({"head": head, "key": other.public_key_bytes().hex()}, "tree head key"),
        ({"head": other.sign(17, tree.root(17)).to_dict() | {"key_id": signer.key_id}, "key": key},
         "tree head signature"),
    ]
    return {"inclusion": cases, "heads": [h for h, _ in heads]}, expected + [(s is None, s) for _, s in heads]


def test_merkle_js_agrees_with_python(driver: Any, tmp_path: Path) -> None:
    vectors, expected = _vectors()
    page = tmp_path / "merkle-test.html"
    page.write_text(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>merkle.js vectors</title>"
        f"<script>window.VECTORS = {json.dumps(vectors)};</script>"
        f"<script src=\"{MERKLE_JS.as_uri()}\"></script></head><body><main><h1>merkle.js</h1></main></body></html>",
        encoding="utf-8",
    )
    driver.get(page.as_uri())
    driver.set_script_timeout(60)
    out = driver.execute_async_script(RUNNER)
    assert "error" not in out, out
    assert out["ed25519"] is True, "this Chromium's WebCrypto lacks Ed25519; the entry page would say so"
    got = out["inclusion"] + out["heads"]
    assert len(got) == len(expected)
    n_inclusion = len(vectors["inclusion"])
    for i, ((ok, step), result) in enumerate(zip(expected, got, strict=True)):
        assert result["ok"] is ok, (i, vectors["inclusion"][i] if i < n_inclusion else vectors["heads"][i - n_inclusion], result)
        if ok and i < n_inclusion:
            assert result["root"] == vectors["inclusion"][i]["root"]
        if not ok:
            assert result["step"] == step, (i, result)
