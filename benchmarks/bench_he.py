"""Benchmark the homomorphic-encryption core against per-value / library baselines, same run.

(1) Paillier encrypted SUM of 3 nodes x 10 000 signed values at 3072 bits:
    ours  = plaintext packing + obfuscators precomputed in worker processes + gmpy2,
    base  = python-paillier (phe) EncryptedNumber per value, then ``+``.
    The baseline is measured on a subsample (100 positions x 3 nodes = 300 encryptions, 200
    additions, 100 decryptions) and extrapolated linearly to 10 000 positions.
(2) CKKS encrypted vector (4096) x plain 4096 x 10 matrix -> 10 outputs, N = 8192:
    ours  = diagonal method with baby-step/giant-step and hybrid fold (xdp_compute.crypto.ckks),
    base  = TenSEAL ``CKKSVector.matmul``.

Run: .venv/bin/python benchmarks/bench_he.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Any

import numpy as np


def _now() -> float:
    return time.perf_counter()


def bench_paillier(
    n_values: int, sub_positions: int, value_bits_list: list[int], workers: int
) -> dict[str, Any]:

    from xdp_compute.crypto import paillier as P

    t0 = _now()
    pub, priv = P.generate_keypair(3072)
    keygen_s = _now() - t0
    rng = random.Random(2024)
    nodes = 3
    results: dict[str, Any] = {
        "key_bits": 3072,
        "nodes": nodes,
        "values_per_node": n_values,
        "keygen_s": keygen_s,
    }

    # ---------------- baseline: phe, one EncryptedNumber per value (subsample, extrapolated)
    phe_pub, phe_priv = pub.to_phe(), priv.to_phe()
    top = (1 << 62) - 1
    sample = [[rng.randint(-top, top) for _ in range(sub_positions)] for _ in range(nodes)]
    t0 = _now()
    encrypted = [[phe_pub.encrypt(v) for v in row] for row in sample]
    base_enc = _now() - t0
    t0 = _now()
    sums = [encrypted[0][i] + encrypted[1][i] + encrypted[2][i] for i in range(sub_positions)]
    base_add = _now() - t0
    t0 = _now()
    decrypted = [phe_priv.decrypt(s) for s in sums]
    base_dec = _now() - t0
    assert decrypted == [sum(col) for col in zip(*sample, strict=True)], "baseline sum is wrong"
    factor = n_values / sub_positions
    base = {
        "measured_encryptions": nodes * sub_positions,
        "extrapolation_factor": factor,
        "encrypt_s": base_enc * factor,
        "add_s": base_add * factor,
        "decrypt_s": base_dec * factor,
        "per_encryption_ms": base_enc / (nodes * sub_positions) * 1e3,
    }
    base["encrypt_add_s"] = base["encrypt_s"] + base["add_s"]
    base["total_s"] = base["encrypt_add_s"] + base["decrypt_s"]
    results["phe_per_value_extrapolated"] = base

    # ---------------- ours: packing + precomputed obfuscators (processes) + gmpy2
    limit = 64 << 20
    ours: dict[str, Any] = {}
    for value_bits in value_bits_list:
        scheme = P.PackingScheme(pub.bits, value_bits, 128)
        vtop = (1 << value_bits) - 1
        data = [[rng.randint(-vtop, vtop) for _ in range(n_values)] for _ in range(nodes)]
        n_ct = scheme.plaintexts_needed(n_values)
        with P.ObfuscatorPool(pub, target=0, workers=workers, chunk=8, start=False) as pool:
            t0 = _now()
            pool.fill(nodes * n_ct, wait_done=True)  # off the critical path in deployment
            precompute = _now() - t0
            t0 = _now()
            wire = [P.encrypt_partials(pub, row, scheme, pool=pool).to_bytes(pub) for row in data]
            encrypt = _now() - t0
        t0 = _now()
        received = [P.EncryptedVector.from_bytes(b, pub, max_bytes=limit) for b in wire]  # validates
        total = P.aggregate_encrypted(pub, received).to_bytes(pub)
        gateway = _now() - t0
        t0 = _now()
        result = P.decrypt_aggregate(priv, P.EncryptedVector.from_bytes(total, pub, max_bytes=limit))
        decrypt = _now() - t0
        assert result == [sum(col) for col in zip(*data, strict=True)], "packed sum is wrong"
        ours[str(value_bits)] = {
            "value_bits": value_bits,
            "slot_bits": scheme.slot_bits,
            "values_per_ciphertext": scheme.values_per_plaintext,
            "ciphertexts_per_node": n_ct,
            "bytes_per_node": len(wire[0]),
            "precompute_s": precompute,
            "encrypt_s": encrypt,
            "gateway_validate_add_s": gateway,
            "decrypt_s": decrypt,
            "ratio_encrypt_add": base["encrypt_add_s"] / (encrypt + gateway),
            "ratio_with_decrypt": base["total_s"] / (encrypt + gateway + decrypt),
            "ratio_end_to_end": base["total_s"] / (precompute + encrypt + gateway + decrypt),
        }
    results["packed"] = ours
    return results


def bench_ckks(repeats: int) -> dict[str, Any]:
    import tenseal as ts

    from xdp_compute.crypto import ckks as C

    rng = np.random.default_rng(7)
    d, outputs = 4096, 10
    vector = rng.uniform(-1, 1, d)
    matrix = rng.uniform(-1, 1, (d, outputs))
    expected = vector @ matrix

    # Ours: the analyst's context has Galois keys for this plan only; the node works on the
    # public context parsed from bytes, as it would after validation.
    sctx = C.make_scoring_context(d, outputs)
    public = ts.context_from(sctx.public_bytes, n_threads=1)
    enc = ts.ckks_vector(sctx.context, vector.tolist())
    weights_ct = enc.ciphertext()[0]
    rows = np.ascontiguousarray(matrix.T)  # G x d: output j = <row j, vector>
    for _ in range(3):
        C.bsgs_matvec(public, weights_ct, rows, sctx.plan)
    times = []
    for _ in range(repeats):
        t0 = _now()
        out_ct = C.bsgs_matvec(public, weights_ct, rows, sctx.plan)
        times.append(_now() - t0)
    ours_out = np.asarray(C.ciphertext_to_vector(sctx.context, out_ct, outputs).decrypt())
    ours_err = float(np.max(np.abs(ours_out - expected)))

    # Full node call (deserialise context + weights, matvec, noise re-encryption, serialise),
    # in-process and in the sandbox subprocess.
    weights_env = C.encrypt_weights(sctx, vector)
    t0 = _now()
    C.score_partial(sctx.public_bytes, weights_env, rows, np.zeros(outputs), 0.0, sandbox=False)
    node_in_process = _now() - t0
    t0 = _now()
    scored = C.score_partial(sctx.public_bytes, weights_env, rows, np.zeros(outputs), 0.0)
    node_sandboxed = _now() - t0
    node_err = float(np.max(np.abs(C.decrypt_scores(sctx, scored, outputs) - expected)))

    # Baseline: TenSEAL matmul (needs its default Galois key set: all powers of two).
    base_ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    base_ctx.global_scale = 2.0**40
    base_ctx.generate_galois_keys()
    base_enc = ts.ckks_vector(base_ctx, vector.tolist())
    t0 = _now()
    base_out = base_enc.matmul(matrix.tolist())
    base_s = _now() - t0
    base_err = float(np.max(np.abs(np.asarray(base_out.decrypt()) - expected)))

    median = statistics.median(times)
    plan = sctx.plan
    return {
        "shape": [d, outputs],
        "poly_modulus_degree": 8192,
        "coeff_mod_bit_sizes": [60, 40, 60],
        "plan": {
            "baby": plan.baby,
            "giant": plan.giant,
            "paired": plan.paired,
            "fold_steps": len(plan.fold_steps),
            "plaintext_encodings": plan.n_diagonals // (2 if plan.paired else 1),
        },
        # Key switchings: baby + Horner + fold, and with pairing one rotation and one conjugation.
        "rotations": (plan.baby - 1)
        + ((plan.giant // 2 if plan.paired else plan.giant) - 1)
        + len(plan.fold_steps)
        + (2 if plan.paired else 0),
        "galois_keys": len(plan.galois_elements()),
        "public_context_bytes": len(sctx.public_bytes),
        "ours_matvec_ms_median": median * 1e3,
        "ours_matvec_ms_min": min(times) * 1e3,
        "ours_matvec_ms_p10": float(np.percentile(times, 10)) * 1e3,
        "ours_max_abs_error": ours_err,
        "node_call_in_process_ms": node_in_process * 1e3,
        "node_call_sandboxed_ms": node_sandboxed * 1e3,
        "node_call_max_abs_error": node_err,
        "tenseal_matmul_ms": base_s * 1e3,
        "tenseal_max_abs_error": base_err,
        "ratio_median": base_s / median,
        "ratio_min": base_s / min(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller Paillier run (1000 values) for a smoke test"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--only", choices=["paillier", "ckks"], help="run one part only")
    parser.add_argument(
        "--value-bits",
        type=int,
        nargs="+",
        default=[62],
        help="declared slot value widths to benchmark (default: the worst case, 62)",
    )
    args = parser.parse_args()
    n_values = 1000 if args.quick else 10_000
    sub = 20 if args.quick else 100

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.workers} worker processes")
    summary: dict[str, Any] = {}
    if args.only != "ckks":
        summary["paillier"] = _report_paillier(bench_paillier(n_values, sub, args.value_bits, args.workers))
    if args.only != "paillier":
        summary["ckks"] = _report_ckks(bench_ckks(repeats=50))
    print("RESULT " + json.dumps(summary, sort_keys=True))


def _report_paillier(pa: dict[str, Any]) -> dict[str, Any]:
    n_values = pa["values_per_node"]
    base = pa["phe_per_value_extrapolated"]
    print(f"\n(1) Paillier SUM, 3 nodes x {n_values} values, 3072-bit key (keygen {pa['keygen_s']:.2f} s)")
    print(
        f"    baseline phe per value: measured {base['measured_encryptions']} encryptions "
        f"({base['per_encryption_ms']:.1f} ms each), extrapolated x{base['extrapolation_factor']:.0f} (linear)"
    )
    head = f"    {'method':<34}{'precompute':>11}{'encrypt':>10}{'gw add':>9}{'decrypt':>10}"
    print(head)
    print(
        f"    {'phe EncryptedNumber per value':<34}{'-':>11}{base['encrypt_s']:>9.1f}s"
        f"{base['add_s']:>8.2f}s{base['decrypt_s']:>9.1f}s"
    )
    for key, row in pa["packed"].items():
        label = f"packed {key}-bit ({row['values_per_ciphertext']}/ct, {row['ciphertexts_per_node']} ct)"
        print(
            f"    {label:<34}{row['precompute_s']:>10.1f}s{row['encrypt_s']:>9.3f}s"
            f"{row['gateway_validate_add_s']:>8.3f}s{row['decrypt_s']:>9.2f}s"
        )
    for key, row in pa["packed"].items():
        print(
            f"    ratio ({key}-bit slots): encrypt+add {row['ratio_encrypt_add']:,.0f}x (obfuscators precomputed); "
            f"incl. decrypt {row['ratio_with_decrypt']:,.0f}x; end to end incl. precompute "
            f"{row['ratio_end_to_end']:,.0f}x"
        )

    return pa


def _report_ckks(ck: dict[str, Any]) -> dict[str, Any]:
    print("\n(2) CKKS encrypted vector(4096) x plain 4096x10 matrix, N=8192, coeff (60,40,60), scale 2^40")
    print(f"    {'method':<44}{'time':>12}{'max abs err':>14}")
    print(
        f"    {'TenSEAL CKKSVector.matmul':<44}{ck['tenseal_matmul_ms']:>10.0f}ms{ck['tenseal_max_abs_error']:>14.1e}"
    )
    label = (
        f"diagonal BSGS (B={ck['plan']['baby']}, {ck['plan']['plaintext_encodings']} pt, "
        f"{ck['rotations']} rot.), median"
    )
    print(f"    {label:<44}{ck['ours_matvec_ms_median']:>10.1f}ms{ck['ours_max_abs_error']:>14.1e}")
    print(f"    {'  same, 10th percentile of 50':<44}{ck['ours_matvec_ms_p10']:>10.1f}ms")
    print(f"    {'  same, min of 50':<44}{ck['ours_matvec_ms_min']:>10.1f}ms")
    print(f"    {'full node call in process (parse+noise+ser.)':<44}{ck['node_call_in_process_ms']:>10.0f}ms")
    print(
        f"    {'full node call in sandbox subprocess':<44}{ck['node_call_sandboxed_ms']:>10.0f}ms"
        f"{ck['node_call_max_abs_error']:>14.1e}"
    )
    print(
        f"    ratio: {ck['ratio_median']:,.0f}x (median), {ck['ratio_min']:,.0f}x (min); "
        f"public context {ck['public_context_bytes'] / 1e6:.1f} MB with {ck['galois_keys']} Galois keys"
    )
    return ck


if __name__ == "__main__":
    main()
