"""The analyst's side of encrypted scoring: the secret-key context, encrypted weights, decryption.

Runs in the SDK, in-process: the analyst parses bytes relayed by the gateway with its own secret
key, which should not leave the process.

Bounds and precision: every slot value (score + noise, after the node scales its matrix and
noise by the public factor 2^-scale_exp that the SDK derived from ``score_bound``) must stay
below 2^(q0_bits - scale_bits - 3) (2^17 by default) or it wraps. Scaling the plaintext matrix
rather than the encrypted weights keeps the error independent of scale_exp: the dominant error
is the weights' encryption noise times the plaintext diagonals, so the absolute error grows with
max|feature_sums| (measured with N = 8192, scale 2^40, 16 features: ~6e-7 for |F| <= 1,
~5e-5 for |F| <= 100, ~5e-3 for |F| <= 1e4, ~0.4 for |F| <= 1e6: about 5e-7 * max|F|).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xdp_compute.crypto._keyfile import read_secret_file, write_secret_file
from xdp_compute.crypto.ckks.envelope import context_fingerprint, int_member, pack_envelope, unpack_envelope
from xdp_compute.crypto.ckks.params import (
    DEFAULT_COEFF_MOD_BIT_SIZES,
    DEFAULT_MAX_CIPHERTEXT_BYTES,
    DEFAULT_MAX_CONTEXT_BYTES,
    DEFAULT_POLY_MODULUS_DEGREE,
    DEFAULT_SCALE_BITS,
    InvalidHeContext,
    check_parameters,
)
from xdp_compute.crypto.ckks.plan import ScoringPlan, scoring_plan
from xdp_compute.crypto.ckks.seal import public_context_bytes, tenseal_module
from xdp_compute.errors import InvalidCiphertext, InvalidKey, InvalidSpec, WrongKey

if TYPE_CHECKING:
    import tenseal as ts

_BOUND_MARGIN_BITS = 3  # keep slot values 8x below the wrap-around point

_CONTEXT_FILE_MAGIC = b"XCKS"


class ScoringContext:
    """The analyst's CKKS context (holds the secret key) and the plan it was made for."""

    def __init__(self, context: ts.Context, plan: ScoringPlan, public_bytes: bytes) -> None:
        self.context = context
        self.plan = plan
        self.public_bytes = public_bytes
        self.fingerprint = context_fingerprint(public_bytes)

    def __repr__(self) -> str:
        return f"ScoringContext(plan={self.plan!r}, fingerprint={self.fingerprint[:16]}...)"

    @property
    def scale_bits(self) -> float:
        """log2 of the global scale."""
        return math.log2(self.context.global_scale)

    @property
    def value_bound_bits(self) -> int:
        """Slot values (after 2^-scale_exp scaling) must stay below 2^value_bound_bits."""
        parms = self.context.seal_context().data.first_context_data().parms()
        q0_bits = parms.coeff_modulus()[0].bit_count()
        return int(q0_bits - self.scale_bits) - _BOUND_MARGIN_BITS


def make_scoring_context(
    n_features: int,
    max_groups: int,
    *,
    poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE,
    coeff_mod_bit_sizes: Sequence[int] = DEFAULT_COEFF_MOD_BIT_SIZES,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> ScoringContext:
    """Build the analyst's CKKS context for scoring ``max_groups`` groups on ``n_features`` weights.

    Generates Galois keys only for the rotations of :func:`scoring_plan` (n_features, max_groups).
    Rejects parameters the nodes would reject (degree not allowed, too many modulus bits).
    """
    bits = [int(b) for b in coeff_mod_bit_sizes]
    try:
        check_parameters(poly_modulus_degree, bits)
    except InvalidHeContext as exc:
        raise InvalidSpec(exc.detail) from None
    if not 20 <= scale_bits <= min(bits[1:-1]):
        raise InvalidSpec("scale_bits must be >= 20 and no larger than the middle primes")
    plan = scoring_plan(n_features, max_groups, poly_modulus_degree // 2)
    ts_mod = tenseal_module()
    context = ts_mod.context(
        ts_mod.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree, coeff_mod_bit_sizes=bits
    )
    context.global_scale = 2.0**scale_bits
    return ScoringContext(context, plan, public_context_bytes(context, plan.galois_elements()))


def save_scoring_context(
    path: str | os.PathLike[str], sctx: ScoringContext, *, overwrite: bool = False
) -> None:
    """Write the analyst's context (secret key included) to a new 0600 file."""
    secret = bytes(
        sctx.context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
    )
    header = json.dumps({"plan": [sctx.plan.n_features, sctx.plan.max_groups, sctx.plan.slots]}).encode()
    body = struct.pack(">III", len(header), len(secret), len(sctx.public_bytes))
    write_secret_file(
        path, _CONTEXT_FILE_MAGIC + body + header + secret + sctx.public_bytes, overwrite=overwrite
    )


def load_scoring_context(path: str | os.PathLike[str]) -> ScoringContext:
    """Load a context written by :func:`save_scoring_context` (refuses group/other-readable files)."""
    data = read_secret_file(path, max_bytes=DEFAULT_MAX_CONTEXT_BYTES * 2)
    try:
        if data[:4] != _CONTEXT_FILE_MAGIC:
            raise ValueError("magic")
        head_len, secret_len, public_len = struct.unpack_from(">III", data, 4)
        pos = 16
        header = json.loads(data[pos : pos + head_len])
        secret = data[pos + head_len : pos + head_len + secret_len]
        public = data[pos + head_len + secret_len :]
        if len(public) != public_len:
            raise ValueError("length")
        d, g, slots = header["plan"]
        context = tenseal_module().context_from(secret)
    except Exception:  # noqa: BLE001  (TenSEAL's C++ binding raises assorted types)
        raise InvalidKey("not a readable xdp-compute CKKS context file") from None
    if not context.has_secret_key():
        raise InvalidKey("CKKS context file holds no secret key")
    return ScoringContext(context, scoring_plan(int(d), int(g), int(slots)), public)


def encrypt_weights(
    sctx: ScoringContext, weights: Sequence[float] | np.ndarray, *, score_bound: float = 2.0**17
) -> bytes:
    """Encrypt a weight vector (bias last, if any) for :func:`score_partial`.

    ``score_bound`` must bound, summed over all nodes, every partial sum the node forms, i.e.
    sum_j |w_j| * |feature_sums[g, j]| + |noise| (intermediate slots hold partial inner
    products, so cancellation in the final score does not help); a safe choice is
    sum_j |w_j| * (clip bound of feature j) * (largest group size). From it the SDK picks
    scale_exp (recorded in the envelope); nodes scale their matrix and noise by 2^-scale_exp so
    slots stay below the wrap-around point (beyond it the result is garbage, not an error), and
    :func:`decrypt_scores` multiplies back. Precision does not depend on scale_exp.
    """
    w = np.asarray(weights, dtype=np.float64)
    plan = sctx.plan
    if w.ndim != 1 or w.shape[0] != plan.n_features:
        raise InvalidSpec(f"weights must be a vector of {plan.n_features} values (the context's n_features)")
    if not np.all(np.isfinite(w)):
        raise InvalidSpec("weights must be finite")
    if not math.isfinite(score_bound) or score_bound <= 0:
        raise InvalidSpec("score_bound must be a positive number")
    scale_exp = max(0, math.ceil(math.log2(score_bound)) - sctx.value_bound_bits)
    padded = np.zeros(plan.period)
    padded[: plan.n_features] = w
    replicated = np.tile(padded, plan.slots // plan.period)
    vector = tenseal_module().ckks_vector(sctx.context, replicated.tolist())
    header = {
        "v": 1,
        "kind": "weights",
        "context": sctx.fingerprint,
        "n_features": plan.n_features,
        "max_groups": plan.max_groups,
        "slots": plan.slots,
        "scale_exp": scale_exp,
    }
    return pack_envelope(header, bytes(vector.serialize()))


def decrypt_scores(
    sctx: ScoringContext,
    data: bytes,
    n_groups: int,
    *,
    max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
) -> np.ndarray:
    """Decrypt a (summed) score ciphertext: one value per group, in score units.

    ``WrongKey`` if it was made under another context. Runs in-process: the analyst parses
    bytes relayed by the gateway with its own secret key, which should not leave the process.
    """
    header, payload = unpack_envelope(data, "scores", max_bytes)
    if header.get("context") != sctx.fingerprint:
        raise WrongKey("these scores were computed under another CKKS context (fingerprint mismatch)")
    groups = int_member(header, "n_groups", 1, sctx.plan.slots)
    scale_exp = int_member(header, "scale_exp", 0, 1024)
    if groups != n_groups:
        raise InvalidCiphertext(f"the result holds {groups} groups, not {n_groups}")
    try:
        vector = tenseal_module().ckks_vector_from(sctx.context, payload)
        values = np.asarray(vector.decrypt(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
        raise InvalidCiphertext(f"score ciphertext could not be decrypted: {type(exc).__name__}") from None
    if values.shape[0] != groups:
        raise InvalidCiphertext("score ciphertext size does not match its header")
    return values * 2.0**scale_exp
