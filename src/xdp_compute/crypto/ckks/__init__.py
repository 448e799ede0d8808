"""CKKS encrypted scoring of a linear model (Cheon, Kim, Kim, Song 2017) with TenSEAL / SEAL.

Flow: an analyst (say, a bank) wants the per-group score sums of a linear model w against a
holder's rows without showing w. The SDK builds a CKKS context (:func:`make_scoring_context`)
and sends its **public** part plus ``Enc(w)`` (:func:`encrypt_weights`). A node computes, for
each group g, ``w . feature_sums[g] + noise[g]`` homomorphically (:func:`score_partial`): a
plaintext-matrix x encrypted-vector product. The gateway adds the nodes' ciphertexts
(:func:`add_ciphertexts`); the SDK decrypts (:func:`decrypt_scores`). A bias b is one more weight
against a feature that is 1 on every row (its group sum is the group's row count).

Modules, one seam each:

* ``plan`` — the diagonal / baby-step giant-step layout (Halevi & Shoup 2014 §4.1-4.2, GAZELLE
  2018 §5.2) and the cost model that picks it;
* ``params`` — the 128-bit parameter floor, size limits and the CKKS errors;
* ``seal`` — TenSEAL / SEAL surgery (raw ciphertexts, exact Galois keys, context checks);
* ``envelope`` — the header-plus-ciphertext format that binds every ciphertext to its context;
* ``analyst`` — the SDK side (secret-key context, encryption, decryption);
* ``evaluate`` — the homomorphic product, DP noise and flooding (runs in the sandbox);
* ``sandbox`` and ``_worker`` — the throw-away process that parses every byte from outside;
* ``operations`` — the node's and gateway's border calls (size checks, then the sandbox).
"""

from xdp_compute.crypto.ckks.analyst import (
    ScoringContext,
    decrypt_scores,
    encrypt_weights,
    load_scoring_context,
    make_scoring_context,
    save_scoring_context,
)
from xdp_compute.crypto.ckks.envelope import context_fingerprint, scores_header, weights_header
from xdp_compute.crypto.ckks.evaluate import bsgs_matvec
from xdp_compute.crypto.ckks.operations import add_ciphertexts, score_partial, validate_public_context
from xdp_compute.crypto.ckks.params import (
    ALLOWED_POLY_MODULUS_DEGREES,
    DEFAULT_COEFF_MOD_BIT_SIZES,
    DEFAULT_MAX_CIPHERTEXT_BYTES,
    DEFAULT_MAX_CONTEXT_BYTES,
    DEFAULT_POLY_MODULUS_DEGREE,
    DEFAULT_SANDBOX_MEMORY,
    DEFAULT_SANDBOX_TIMEOUT,
    DEFAULT_SCALE_BITS,
    HeSandboxFailure,
    InvalidHeContext,
    UnsafeHeContext,
    check_parameters,
)
from xdp_compute.crypto.ckks.plan import ScoringPlan, scoring_plan
from xdp_compute.crypto.ckks.seal import ContextInfo, ciphertext_to_vector

__all__ = [
    "ALLOWED_POLY_MODULUS_DEGREES",
    "DEFAULT_COEFF_MOD_BIT_SIZES",
    "DEFAULT_MAX_CIPHERTEXT_BYTES",
    "DEFAULT_MAX_CONTEXT_BYTES",
    "DEFAULT_POLY_MODULUS_DEGREE",
    "DEFAULT_SANDBOX_MEMORY",
    "DEFAULT_SANDBOX_TIMEOUT",
    "DEFAULT_SCALE_BITS",
    "ContextInfo",
    "HeSandboxFailure",
    "InvalidHeContext",
    "ScoringContext",
    "ScoringPlan",
    "UnsafeHeContext",
    "add_ciphertexts",
    "bsgs_matvec",
    "check_parameters",
    "ciphertext_to_vector",
    "context_fingerprint",
    "decrypt_scores",
    "encrypt_weights",
    "load_scoring_context",
    "make_scoring_context",
    "save_scoring_context",
    "score_partial",
    "scores_header",
    "scoring_plan",
    "validate_public_context",
    "weights_header",
]
