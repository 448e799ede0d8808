/* The auditor's entry page: fetch the entry's leaf bytes, the latest signed tree head and the
 * inclusion proof for its size, and check them here with merkle.js (WebCrypto). The verdict is
 * written as text ("verified" / "FAILED: <step>: <why>") and recorded in data attributes
 * (data-state, data-computed-root, data-head-root, data-tree-size) for tests and tools.
 */
(function () {
  "use strict";
  var M = window.XdpMerkle;
  var status = document.getElementById("proof-status");
  var steps = document.getElementById("proof-steps");
  var facts = document.getElementById("proof-facts");
  if (!status || !M) return;

  function step(text, ok) {
    var li = document.createElement("li");
    li.textContent = (ok ? "passed: " : "FAILED: ") + text;
    li.className = ok ? "ok" : "bad";
    steps.appendChild(li);
  }

  function fact(name, value) {
    var dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    dd.className = "mono";
    facts.appendChild(dt);
    facts.appendChild(dd);
  }

  function finish(ok, text) {
    status.dataset.state = ok ? "verified" : "failed";
    status.className = ok ? "verdict ok" : "verdict bad";
    status.textContent = ok ? "verified: " + text : "FAILED: " + text;
  }

  async function fetchOk(url, what) {
    var r = await fetch(url, { credentials: "same-origin", headers: { "accept": "application/json" } });
    if (!r.ok) throw new M.ProofError("fetching " + what, "the gateway answered " + r.status);
    return r;
  }

  async function run() {
    var index = status.dataset.index;
    var head = await (await fetchOk(status.dataset.headUrl, "the signed tree head")).json();
    var sth = head.signed_tree_head;
    if (!sth) throw new M.ProofError("fetching the signed tree head", "the log has no signed tree head yet");
    status.dataset.treeSize = String(sth.tree_size);
    status.dataset.headRoot = sth.root_hash;
    fact("Signed tree head", "size " + sth.tree_size + ", root " + sth.root_hash);
    fact("Signed at", new Date(sth.timestamp_ms).toISOString());
    fact("Log key", head.key_id);

    // The head's signature: in this browser when its WebCrypto has Ed25519, else the gateway's check.
    if (await M.ed25519Supported()) {
      try {
        await M.verifyTreeHead(sth, head.public_key);
        step("the tree head's Ed25519 signature verifies under the log's published key (checked in this browser)", true);
        status.dataset.signatureCheckedBy = "browser";
      } catch (e) {
        step((e.step || "tree head") + ": " + e.message, false);
        throw e;
      }
    } else {
      status.dataset.signatureCheckedBy = "gateway";
      var ok = head.gateway_signature_check === "verified";
      step("the tree head's signature, checked by the gateway (this browser's WebCrypto has no Ed25519): " +
           head.gateway_signature_check, ok);
      if (!ok) throw new M.ProofError("tree head signature", "the gateway reports " + head.gateway_signature_check);
    }

    var proofUrl = status.dataset.proofUrl + "?index=" + encodeURIComponent(index) +
                   "&size=" + encodeURIComponent(sth.tree_size);
    var proof = await (await fetchOk(proofUrl, "the inclusion proof")).json();
    var leaf = new Uint8Array(await (await fetchOk(status.dataset.leafUrl, "the entry's leaf bytes")).arrayBuffer());
    var leafHash = await M.hashLeaf(leaf);
    status.dataset.leafHash = M.bytesToHex(leafHash);
    fact("Leaf hash", M.bytesToHex(leafHash) + " (SHA-256 of 0x00 and the entry's " + leaf.length + " bytes)");
    fact("Proof", proof.proof.length + " sibling hashes for leaf " + proof.index + " of " + proof.tree_size);

    var computed;
    try {
      computed = await M.rootFromInclusionProof(leafHash, proof.index, proof.tree_size, proof.proof.map(M.hexToBytes));
    } catch (e) {
      step((e.step || "inclusion proof") + ": " + e.message, false);
      throw e;
    }
    status.dataset.computedRoot = M.bytesToHex(computed);
    fact("Computed root", M.bytesToHex(computed));
    try {
      await M.verifyInclusion(leafHash, proof.index, proof.tree_size, proof.proof.map(M.hexToBytes),
                              M.hexToBytes(sth.root_hash));
    } catch (e) {
      step((e.step || "inclusion proof") + ": the root computed from this entry and its proof is not the signed root " +
           "(the entry as served is not the one the log committed to)", false);
      throw e;
    }
    step("RFC 9162 §2.1.3.2: the root computed from this entry and its proof equals the signed root", true);
    finish(true, "entry #" + index + " is included in the signed log of " + sth.tree_size + " entries");
  }

  run().catch(function (e) {
    finish(false, (e && e.step ? e.step + ": " : "") + (e && e.message ? e.message : String(e)));
  });
})();
