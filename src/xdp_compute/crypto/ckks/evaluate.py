"""Homomorphic evaluation of the scores, run where outside bytes are parsed (the sandbox).

Node: :func:`score_in_process` computes, for each group g, ``w . feature_sums[g] + noise[g]`` as
a plaintext-matrix x encrypted-vector product (:func:`bsgs_matvec`, layout in
:mod:`xdp_compute.crypto.ckks.plan`). Gateway: :func:`add_in_process` adds the nodes' score
ciphertexts. Both expect size-checked input and are called by the sandbox worker (or directly,
for trusted bytes, with ``sandbox=False`` in :mod:`xdp_compute.crypto.ckks.operations`).

Plaintext diagonals are encoded at the scale of the prime that the rescale drops, so the result's
scale is exactly the weights' scale and ciphertexts from several nodes add without scale drift.

Noise and circuit privacy: the node adds its DP noise share (``noise[g]``, in every slot that
holds group g) and flooding noise N(0, flood_sigma^2) in every slot, both inside a *fresh*
public-key encryption that is added to the result. The fresh encryption re-randomises the
ciphertext (its mask polynomial becomes uniform); the flooding hides the CKKS approximation
error, which depends on the node's matrix. This is heuristic circuit privacy: provable
statistical hiding (noise flooding in the sense of Gentry 2009 / Li & Micciancio 2021) would
need flooding ~2^40 times the error, which CKKS precision cannot afford. The released value is
protected by the DP noise; ``flood_sigma`` is declared in the result header so the SDK can add
it to the error bar.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from xdp_compute.crypto.ckks.envelope import int_member, weights_plan
from xdp_compute.crypto.ckks.params import InvalidHeContext
from xdp_compute.crypto.ckks.plan import ScoringPlan
from xdp_compute.crypto.ckks.seal import load_context, tenseal_module, vector_payload
from xdp_compute.errors import InvalidCiphertext

if TYPE_CHECKING:
    import tenseal as ts


def _gaussian(size: int, sigma: float) -> np.ndarray:
    """N(0, sigma^2) samples from the OS CSPRNG (Box-Muller over 53-bit uniforms)."""
    if sigma == 0 or size == 0:
        return np.zeros(size)
    raw = np.frombuffer(os.urandom(16 * ((size + 1) // 2)), dtype=np.uint64).reshape(2, -1)
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return sigma * z[:size]


def _alternating_i(slots: int) -> np.ndarray:
    # X^(N/2) evaluates to i at a root zeta^g with g = 1 (mod 4) and to -i when g = 3 (mod 4);
    # SEAL puts slot k at g = 3^k mod 2N, so the pattern alternates. Encoded at scale 1 this
    # vector is exactly the monomial X^(N/2) (integer coefficients, no rounding): an exact
    # multiplication by +-i that costs no level.
    return np.where(np.arange(slots) % 2 == 0, 1j, -1j)


def bsgs_matvec(context: ts.Context, weights: Any, feature_sums: np.ndarray, plan: ScoringPlan) -> Any | None:
    """Encrypted weights x plaintext G x d matrix by diagonals with baby-step/giant-step.

    ``weights`` is the raw SEAL ciphertext of the replicated weight vector at the first level.
    Returns a SEAL ciphertext one level down whose slot k holds the score of group k mod rows
    (wide plan) or of group k (tall plan), at exactly the weights' scale; ``None`` if the matrix
    is all zero (SEAL refuses transparent results). Cites: Halevi & Shoup 2014 §4.1-4.2.

    Paired plans (``plan.paired``) put two real diagonals in one complex plaintext, halving the
    encodings, multiplications and rescales: with H = giant/2 and sigma the +-i pattern of
    X^(N/2) (see ``_alternating_i``), X_j = sum_b (E_j,b + sigma * E_j+H,b) / 2 * rot(w, b), so
    Y = sum_{j<H} rot(X_j, jB) = (U + sigma * V) / 2 with U, V the real Horner sums of the low
    and high halves (B even keeps sigma aligned under the rotations). Multiplying by the
    monomial gives sigma * Y = (sigma * U - V) / 2, hence
    Re(Y - rot(sigma * Y, HB)) = (U + rot(V, HB)) / 2, and the real part is taken with one
    conjugation at the end: T + conj(T) = U + rot(V, HB), the full giant-step sum.
    """
    sealapi = tenseal_module().sealapi
    seal_context = context.seal_context().data
    galois = context.galois_keys().data if plan.galois_elements() else None
    evaluator = sealapi.Evaluator(seal_context)
    encoder = sealapi.CKKSEncoder(seal_context)
    parms_id = weights.parms_id()
    level = seal_context.get_context_data(parms_id)
    # Encode diagonals at the scale of the prime that rescale drops: the product then comes
    # back to exactly the weights' scale.
    drop_scale = float(level.parms().coeff_modulus()[-1].value())
    zero_cut = 0.5 / drop_scale  # entries below this encode to 0
    baby = plan.baby
    half = plan.giant // 2 if plan.paired else plan.giant
    sigma = _alternating_i(plan.slots)

    babies = [weights]
    for _ in range(1, baby):  # baby steps: rot(w, b) = rot(rot(w, b - 1), 1)
        rotated = sealapi.Ciphertext()
        evaluator.rotate_vector(babies[-1], 1, galois, rotated)
        babies.append(rotated)

    inner: list[Any | None] = []
    for j in range(half):
        # rot(D, -jB)[k] = D[k - jB]: pre-rotated diagonals for giant step j.
        block: np.ndarray = np.roll(plan.diagonals(feature_sums, j * baby, baby), j * baby, axis=1)
        if plan.paired:
            high = np.roll(plan.diagonals(feature_sums, (j + half) * baby, baby), (j + half) * baby, axis=1)
            block = 0.5 * (block + sigma[None, :] * high)
        acc = None
        for b in range(baby):
            diag = block[b]
            if not np.any(np.abs(diag) >= zero_cut):
                continue  # an all-zero plaintext would make a transparent ciphertext
            plain = sealapi.Plaintext()
            encoder.encode(diag.tolist(), parms_id, drop_scale, plain)
            product = sealapi.Ciphertext()
            evaluator.multiply_plain(babies[b], plain, product)
            if acc is None:
                acc = product
            else:
                evaluator.add_inplace(acc, product)
        if acc is not None:
            evaluator.rescale_to_next_inplace(acc)  # giant steps then run on one fewer prime
        inner.append(acc)

    result = None
    for j in reversed(range(half)):  # Horner: sum_j rot(I_j, jB)
        if result is not None:
            evaluator.rotate_vector_inplace(result, baby, galois)
        if inner[j] is not None:
            if result is None:
                result = inner[j]
            else:
                evaluator.add_inplace(result, inner[j])
    if result is None:
        return None
    if plan.paired:
        monomial = sealapi.Plaintext()
        encoder.encode(sigma.tolist(), result.parms_id(), 1.0, monomial)
        shifted = sealapi.Ciphertext()
        evaluator.multiply_plain(result, monomial, shifted)
        evaluator.rotate_vector_inplace(shifted, half * baby, galois)
        evaluator.sub_inplace(result, shifted)
    for shift in plan.fold_steps:  # GAZELLE hybrid fold: add row sums over the period
        rotated = sealapi.Ciphertext()
        evaluator.rotate_vector(result, shift, galois, rotated)
        evaluator.add_inplace(result, rotated)
    if plan.paired:
        conjugate = sealapi.Ciphertext()
        evaluator.complex_conjugate(result, galois, conjugate)
        evaluator.add_inplace(result, conjugate)  # 2 Re(T)
    return result


def _check_weights_ciphertext(context: ts.Context, vector: Any, plan: ScoringPlan) -> Any:
    ciphertexts = vector.ciphertext()
    if vector.size() != plan.slots or len(ciphertexts) != 1:
        raise InvalidCiphertext(f"encrypted weights must fill all {plan.slots} slots of one ciphertext")
    ct = ciphertexts[0]
    seal_context = context.seal_context().data
    if ct.parms_id() != seal_context.first_parms_id():
        raise InvalidCiphertext("encrypted weights are not at the top level of the context")
    if ct.size() != 2:
        raise InvalidCiphertext("encrypted weights must be a size-2 ciphertext")
    if ct.scale != context.global_scale:
        raise InvalidCiphertext("encrypted weights are not at the context's global scale")
    return ct


def score_in_process(
    public_context: bytes,
    weights_header: dict[str, Any],
    weights_payload: bytes,
    feature_sums: np.ndarray,
    noise: np.ndarray,
    flood_sigma: float,
) -> bytes:
    ts_mod = tenseal_module()
    context, info = load_context(public_context)
    plan = weights_plan(weights_header)
    if plan.slots * 2 != info.poly_modulus_degree:
        raise InvalidCiphertext("weights envelope slot count does not match the context")
    if plan.galois_elements():
        if not context.has_galois_keys():
            raise InvalidHeContext("context has no Galois keys but the plan needs rotations")
        keys = context.galois_keys().data
        for element in plan.galois_elements():
            if not keys.has_key(element):
                raise InvalidHeContext(f"context lacks the Galois key for element {element} (rotation plan)")
    try:
        vector = ts_mod.ckks_vector_from(context, weights_payload)
    except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
        raise InvalidCiphertext(f"encrypted weights could not be parsed: {type(exc).__name__}") from None
    weights = _check_weights_ciphertext(context, vector, plan)
    scale_exp = int_member(weights_header, "scale_exp", 0, 1024)

    factor = 2.0**-scale_exp  # exact power of two: no rounding in the scaling itself
    result = bsgs_matvec(context, weights, feature_sums * factor, plan)
    sealapi = ts_mod.sealapi
    seal_context = context.seal_context().data
    evaluator = sealapi.Evaluator(seal_context)
    last = seal_context.last_parms_id()
    if result is not None and result.parms_id() != last:
        evaluator.mod_switch_to_inplace(result, last)  # smaller ciphertext, uniform level

    # Noise goes in through a fresh public-key encryption: DP share in every slot holding the
    # group, flooding in every slot; the fresh encryption re-randomises the ciphertext.
    groups = feature_sums.shape[0]
    slot_noise = (plan.replicate_outputs(noise) + _gaussian(plan.slots, flood_sigma)) * factor
    encoder = sealapi.CKKSEncoder(seal_context)
    plain = sealapi.Plaintext()
    encoder.encode(slot_noise.tolist(), last, float(context.global_scale), plain)
    fresh = sealapi.Ciphertext()
    sealapi.Encryptor(seal_context, context.public_key().data).encrypt(plain, fresh)
    if result is None:
        result = fresh
    else:
        evaluator.add_inplace(result, fresh)

    return vector_payload(result, groups)


def add_in_process(public_context: bytes, headers: list[dict[str, Any]], payloads: list[bytes]) -> bytes:
    ts_mod = tenseal_module()
    context, _info = load_context(public_context)
    seal_context = context.seal_context().data
    groups = headers[0]["n_groups"]
    total = None
    for index, payload in enumerate(payloads):
        try:
            vector = ts_mod.ckks_vector_from(context, payload)
        except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
            raise InvalidCiphertext(
                f"score ciphertext {index} could not be parsed: {type(exc).__name__}"
            ) from None
        cts = vector.ciphertext()
        if vector.size() != groups or len(cts) != 1:
            raise InvalidCiphertext(
                f"score ciphertext {index} does not hold {groups} groups in one ciphertext"
            )
        ct = cts[0]
        if ct.parms_id() != seal_context.last_parms_id() or ct.size() != 2:
            raise InvalidCiphertext(f"score ciphertext {index} is not a size-2 ciphertext at the last level")
        if ct.scale != context.global_scale:
            raise InvalidCiphertext(f"score ciphertext {index} is not at the context's global scale")
        total = vector if total is None else total.add(vector)
    assert total is not None

    return bytes(total.serialize())
