/* RFC 9162 (Certificate Transparency v2) inclusion proofs and Ed25519 signed tree heads,
 * checked in the browser with WebCrypto: the console's auditor pages use it so that an
 * entry's proof is verified by the auditor's own browser, not only by the gateway.
 *
 * It mirrors src/xdp_compute/audit/merkle.py (verify_inclusion) and audit/heads.py
 * (tree_head_message, verify_tree_head) step for step; tests/console compares the two.
 *
 * - leaf hash  = SHA-256(0x00 || leaf)            (RFC 9162 §2.1.1)
 * - node hash  = SHA-256(0x01 || left || right)   (RFC 9162 §2.1.1)
 * - inclusion  = RFC 9162 §2.1.3.2, steps numbered at their lines below
 * - tree head  = Ed25519 (RFC 8032 §5.1.7) over canonical JSON
 *                {"key_id","root_hash","timestamp_ms","tree_size"} (keys sorted)
 *
 * Plain script (no module) so it also runs from a file:// test page; everything lives on
 * the global XdpMerkle. Indices and sizes are BigInt: JavaScript's bitwise operators work
 * on 32 bits, the log's indices need not fit.
 */
(function (global) {
  "use strict";

  var HASH_SIZE = 32;

  /** A proof or head that does not verify; `step` names where (e.g. "RFC 9162 §2.1.3.2 step 5"). */
  function ProofError(step, message) {
    this.name = "ProofError";
    this.step = step;
    this.message = message;
  }
  ProofError.prototype = Object.create(Error.prototype);
  ProofError.prototype.constructor = ProofError;

  function hexToBytes(hex) {
    if (typeof hex !== "string" || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
      throw new ProofError("decoding", "not a hex string");
    }
    var out = new Uint8Array(hex.length / 2);
    for (var i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
    return out;
  }

  function bytesToHex(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return s;
  }

  function base64ToBytes(b64) {
    var bin;
    try {
      bin = global.atob(b64);
    } catch (e) {
      throw new ProofError("decoding", "signature is not valid base64");
    }
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function concat(parts) {
    var n = 0, i;
    for (i = 0; i < parts.length; i++) n += parts[i].length;
    var out = new Uint8Array(n), at = 0;
    for (i = 0; i < parts.length; i++) { out.set(parts[i], at); at += parts[i].length; }
    return out;
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function subtle() {
    if (!global.crypto || !global.crypto.subtle) {
      throw new ProofError("setup", "WebCrypto is not available (the console must be served over https or from 127.0.0.1)");
    }
    return global.crypto.subtle;
  }

  function sha256(bytes) {
    return subtle().digest("SHA-256", bytes).then(function (d) { return new Uint8Array(d); });
  }

  /** RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 || leaf). */
  function hashLeaf(leaf) {
    return sha256(concat([new Uint8Array([0]), leaf]));
  }

  /** RFC 9162 §2.1.1 interior node hash: SHA-256(0x01 || left || right). */
  function hashChildren(left, right) {
    return sha256(concat([new Uint8Array([1]), left, right]));
  }

  function checkHash(h, what) {
    if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
      throw new ProofError("decoding", what + " is not a " + HASH_SIZE + "-byte hash");
    }
  }

  /**
   * The root an RFC 9162 §2.1.3.2 inclusion proof yields for `leafHash` at `index` in a tree
   * of `size` leaves (steps 1-5 without the final comparison). Rejects with ProofError.
   */
  async function rootFromInclusionProof(leafHash, index, size, proof) {
    var fn0 = BigInt(index), size0 = BigInt(size);
    checkHash(leafHash, "leaf hash");
    proof.forEach(function (p, i) { checkHash(p, "inclusion proof[" + i + "]"); });
    // Step 1: if leaf_index is greater than or equal to tree_size, then fail the proof verification.
    if (fn0 >= size0) {
      throw new ProofError("RFC 9162 §2.1.3.2 step 1", "leaf index " + index + " is not inside a tree of size " + size);
    }
    // Step 2: set fn to leaf_index and sn to tree_size - 1.
    var fn = fn0, sn = size0 - 1n;
    // Step 3: set r to hash.
    var r = leafHash;
    // Step 4: for each value p in the inclusion_path array:
    for (var i = 0; i < proof.length; i++) {
      var p = proof[i];
      // 4a: if sn is 0, then stop the iteration and fail the proof verification.
      if (sn === 0n) {
        throw new ProofError("RFC 9162 §2.1.3.2 step 4a", "inclusion proof too long: " + proof.length +
          " hashes for leaf " + index + " of " + size);
      }
      // 4b: if LSB(fn) is set, or if fn is equal to sn, then:
      if ((fn & 1n) === 1n || fn === sn) {
        // 4b i: set r to HASH(0x01 || p || r).
        r = await hashChildren(p, r);
        // 4b ii: if LSB(fn) is not set, then right-shift both fn and sn equally until either
        // LSB(fn) is set or fn is 0.
        if ((fn & 1n) === 0n) {
          while (fn !== 0n && (fn & 1n) === 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        // Otherwise: set r to HASH(0x01 || r || p).
        r = await hashChildren(r, p);
      }
      // 4c: finally, right-shift both fn and sn one time.
      fn >>= 1n;
      sn >>= 1n;
    }
    // Step 5 (first half): after completing iterating through the inclusion_path array, sn must be 0.
    if (sn !== 0n) {
      throw new ProofError("RFC 9162 §2.1.3.2 step 5", "inclusion proof too short: " + proof.length +
        " hashes for leaf " + index + " of " + size);
    }
    return r;
  }

  /**
   * Check an RFC 9162 §2.1.3.2 inclusion proof; resolve to the computed root (equal to `root`)
   * or reject with ProofError naming the failing step.
   */
  async function verifyInclusion(leafHash, index, size, proof, root) {
    checkHash(root, "root hash");
    var r = await rootFromInclusionProof(leafHash, index, size, proof);
    // Step 5 (second half): compare r against the root hash; equal means verified.
    if (!equal(r, root)) {
      var err = new ProofError("RFC 9162 §2.1.3.2 step 5", "the proof for leaf " + index + " in a tree of size " +
        size + " yields root " + bytesToHex(r) + ", not the signed " + bytesToHex(root));
      err.computedRoot = r;
      throw err;
    }
    return r;
  }

  /** The exact bytes a tree-head signature covers (audit/heads.py tree_head_message). */
  function treeHeadMessage(head) {
    // canonical_json of four fields, keys in code-point order, no whitespace. Every value is a
    // lowercase-hex string or a non-negative integer, which JSON.stringify writes the same way.
    var text = "{" +
      "\"key_id\":" + JSON.stringify(head.key_id) + "," +
      "\"root_hash\":" + JSON.stringify(head.root_hash) + "," +
      "\"timestamp_ms\":" + String(head.timestamp_ms) + "," +
      "\"tree_size\":" + String(head.tree_size) + "}";
    return new TextEncoder().encode(text);
  }

  /** True when this browser's WebCrypto verifies Ed25519 (RFC 8032) signatures. */
  async function ed25519Supported() {
    try {
      await subtle().importKey("raw", new Uint8Array(32), { name: "Ed25519" }, false, ["verify"]);
      return true;
    } catch (e) {
      // An all-zero key may be refused as invalid even where Ed25519 exists; that is a
      // DataError, not NotSupportedError.
      return !!(e && e.name === "DataError");
    }
  }

  /**
   * Check a signed tree head against the log's raw Ed25519 public key (hex): the head must
   * name that key (key_id = SHA-256 of it) and its signature must verify (RFC 8032 §5.1.7).
   * Rejects with ProofError.
   */
  async function verifyTreeHead(head, publicKeyHex) {
    var key = hexToBytes(publicKeyHex);
    if (key.length !== 32) throw new ProofError("tree head", "the log's public key must be 32 bytes");
    var keyId = bytesToHex(await sha256(key));
    if (head.key_id !== keyId) {
      throw new ProofError("tree head key", "the head for size " + head.tree_size + " is signed by key " +
        String(head.key_id).slice(0, 16) + "..., not the log's key " + keyId.slice(0, 16) + "...");
    }
    var signature = base64ToBytes(head.signature);
    if (signature.length !== 64) throw new ProofError("tree head signature", "an Ed25519 signature is 64 bytes");
    var publicKey = await subtle().importKey("raw", key, { name: "Ed25519" }, false, ["verify"]);
    var ok = await subtle().verify({ name: "Ed25519" }, publicKey, signature, treeHeadMessage(head));
    if (!ok) {
      throw new ProofError("tree head signature", "the signature on the tree head for size " + head.tree_size +
        " does not verify under the log's key");
    }
    return true;
  }

  global.XdpMerkle = {
    HASH_SIZE: HASH_SIZE,
    ProofError: ProofError,
    hexToBytes: hexToBytes,
    bytesToHex: bytesToHex,
    hashLeaf: hashLeaf,
    hashChildren: hashChildren,
    rootFromInclusionProof: rootFromInclusionProof,
    verifyInclusion: verifyInclusion,
    treeHeadMessage: treeHeadMessage,
    ed25519Supported: ed25519Supported,
    verifyTreeHead: verifyTreeHead,
  };
})(window);
