"""The CKKS borders of node and gateway: size checks here, parsing and evaluation in the sandbox.

Contexts and ciphertexts from outside are parsed only in the sandbox subprocess
(:mod:`xdp_compute.crypto.ckks.sandbox`); ``sandbox=False`` runs the same code in-process and is
for trusted bytes only. Result headers are built here from what this process validated, never
taken from the sandbox: a compromised worker can at worst return a bad ciphertext.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdp_compute.crypto.ckks.envelope import (
    context_fingerprint,
    float_member,
    int_member,
    new_scores_header,
    pack_envelope,
    unpack_envelope,
    weights_plan,
)
from xdp_compute.crypto.ckks.evaluate import add_in_process, score_in_process
from xdp_compute.crypto.ckks.params import (
    ALLOWED_POLY_MODULUS_DEGREES,
    DEFAULT_MAX_CIPHERTEXT_BYTES,
    DEFAULT_MAX_CONTEXT_BYTES,
    DEFAULT_SANDBOX_MEMORY,
    DEFAULT_SANDBOX_TIMEOUT,
    InvalidHeContext,
)
from xdp_compute.crypto.ckks.sandbox import run_sandboxed, single_blob
from xdp_compute.crypto.ckks.seal import ContextInfo, load_context
from xdp_compute.errors import InvalidCiphertext, InvalidSpec, PayloadTooLarge

_MAX_FEATURE_MAGNITUDE = 2.0**40


def _check_size(data: Any, max_bytes: int, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidHeContext(f"{what} must be bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    if not data:
        raise InvalidHeContext(f"{what} is empty")
    return bytes(data)


def validate_public_context(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
    *,
    sandbox: bool = True,
    timeout: float = DEFAULT_SANDBOX_TIMEOUT,
    memory_bytes: int = DEFAULT_SANDBOX_MEMORY,
) -> ContextInfo:
    """Check a public CKKS context from outside; return what it holds.

    Raises ``PayloadTooLarge`` (413) over ``max_bytes``; ``UnsafeHeContext`` (400) if it holds a
    secret key, its degree is not in ``ALLOWED_POLY_MODULUS_DEGREES`` or its coefficient
    modulus exceeds the 128-bit bound; ``InvalidHeContext`` (400) if malformed, not CKKS, or
    missing the public key; ``HeSandboxFailure`` (400) if parsing crashed or hung.
    """
    raw = _check_size(data, max_bytes, "CKKS context")
    if not sandbox:
        return load_context(raw)[1]
    answer, _ = run_sandboxed({"op": "validate"}, [raw], timeout=timeout, memory_bytes=memory_bytes)
    info = dict(answer["info"])
    info["coeff_mod_bit_sizes"] = tuple(info["coeff_mod_bit_sizes"])
    return ContextInfo(**info)


def score_partial(
    public_context_bytes: bytes,
    enc_weights_bytes: bytes,
    feature_sums: np.ndarray,
    noise: np.ndarray,
    flood_sigma: float,
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
    max_ciphertext_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
    sandbox: bool = True,
    timeout: float = DEFAULT_SANDBOX_TIMEOUT,
    memory_bytes: int = DEFAULT_SANDBOX_MEMORY,
) -> bytes:
    """Node side: encrypted per-group scores ``w . feature_sums[g] + noise[g]`` (+ flooding).

    ``feature_sums`` is G x d (per group, the sum over its filtered rows of the clipped feature
    vector; G <= the context's ``max_groups``), ``noise`` the node's DP noise share per group,
    ``flood_sigma`` the standard deviation of the circuit-privacy flooding (score units, may be
    0). Validates the context and the weights (sizes here; contents in the sandbox) and runs
    the computation in the sandbox unless ``sandbox=False`` (trusted bytes only).
    """
    context = _check_size(public_context_bytes, max_context_bytes, "CKKS context")
    header, payload = unpack_envelope(enc_weights_bytes, "weights", max_ciphertext_bytes)
    if header.get("context") != context_fingerprint(context):
        raise InvalidCiphertext("encrypted weights were made under another CKKS context")
    plan = weights_plan(header)
    features = np.asarray(feature_sums, dtype=np.float64)
    noise_arr = np.asarray(noise, dtype=np.float64).reshape(-1)
    if features.ndim != 2 or features.shape[1] != plan.n_features:
        raise InvalidSpec(f"feature_sums must be G x {plan.n_features}")
    groups = features.shape[0]
    if not 1 <= groups <= plan.max_groups:
        raise InvalidSpec(f"feature_sums has {groups} groups; the context allows 1..{plan.max_groups}")
    if noise_arr.shape != (groups,):
        raise InvalidSpec(f"noise must hold one value per group ({groups})")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(noise_arr))):
        raise InvalidSpec("feature_sums and noise must be finite")
    if np.max(np.abs(features)) > _MAX_FEATURE_MAGNITUDE:
        raise InvalidSpec("feature sums above 2^40 in magnitude are not supported")
    if not math.isfinite(flood_sigma) or flood_sigma < 0:
        raise InvalidSpec("flood_sigma must be a finite non-negative number")
    features = np.ascontiguousarray(features)
    # The result header is built here from what this process validated, not taken from the
    # sandbox: a compromised worker can at worst return a bad ciphertext.
    out_header = new_scores_header(
        context_fingerprint(context),
        groups,
        int_member(header, "scale_exp", 0, 1024),
        1,
        float(flood_sigma) ** 2,
    )
    if not sandbox:
        out = score_in_process(context, header, payload, features, noise_arr, float(flood_sigma))
        return pack_envelope(out_header, out)
    _answer, blobs = run_sandboxed(
        {
            "op": "score",
            "weights_header": header,
            "shape": [groups, plan.n_features],
            "flood_sigma": float(flood_sigma),
        },
        [context, payload, features.astype("<f8").tobytes(), noise_arr.astype("<f8").tobytes()],
        timeout=timeout,
        memory_bytes=memory_bytes,
    )
    return pack_envelope(out_header, single_blob(blobs))


def add_ciphertexts(
    public_context_bytes: bytes,
    ciphertexts: Sequence[bytes],
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
    max_ciphertext_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
    max_inputs: int = 1024,
    sandbox: bool = True,
    timeout: float = DEFAULT_SANDBOX_TIMEOUT,
    memory_bytes: int = DEFAULT_SANDBOX_MEMORY,
) -> bytes:
    """Gateway side: add nodes' score ciphertexts (same context, groups and scaling).

    Needs only the public context. Contribution counts and flooding variances add up in the
    result header. Every input is size-checked here and parsed in the sandbox.
    """
    context = _check_size(public_context_bytes, max_context_bytes, "CKKS context")
    if not ciphertexts:
        raise InvalidCiphertext("nothing to add")
    if len(ciphertexts) > max_inputs:
        raise PayloadTooLarge(
            f"{len(ciphertexts)} ciphertexts; at most {max_inputs} may be added", limit=max_inputs
        )
    fingerprint = context_fingerprint(context)
    headers: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for index, data in enumerate(ciphertexts):
        header, payload = unpack_envelope(data, "scores", max_ciphertext_bytes)
        if header.get("context") != fingerprint:
            raise InvalidCiphertext(f"score ciphertext {index} was made under another CKKS context")
        clean = {
            "n_groups": int_member(header, "n_groups", 1, max(ALLOWED_POLY_MODULUS_DEGREES) // 2),
            "scale_exp": int_member(header, "scale_exp", 0, 1024),
            "n_contributions": int_member(header, "n_contributions", 1, 1 << 20),
            "flood_variance": float_member(header, "flood_variance"),
        }
        if headers and (clean["n_groups"], clean["scale_exp"]) != (
            headers[0]["n_groups"],
            headers[0]["scale_exp"],
        ):
            raise InvalidCiphertext(f"score ciphertext {index} has different groups or scaling")
        headers.append(clean)
        payloads.append(payload)
    out_header = new_scores_header(
        fingerprint,
        headers[0]["n_groups"],
        headers[0]["scale_exp"],
        sum(h["n_contributions"] for h in headers),
        sum(h["flood_variance"] for h in headers),
    )
    if not sandbox:
        out = add_in_process(context, headers, payloads)
        return pack_envelope(out_header, out)
    _answer, blobs = run_sandboxed(
        {"op": "add", "headers": headers}, [context, *payloads], timeout=timeout, memory_bytes=memory_bytes
    )
    return pack_envelope(out_header, single_blob(blobs))
