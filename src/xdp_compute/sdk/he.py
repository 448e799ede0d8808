"""Analyst-side homomorphic encryption: Paillier keys kept locally, decryption of encrypted answers."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from xdp_compute.crypto.paillier import (
    DEFAULT_KEY_BITS,
    EncryptedVector,
    PaillierPrivate,
    PaillierPublic,
    decrypt_aggregate,
    generate_keypair,
    load_private_key,
    save_private_key,
)
from xdp_compute.errors import Conflict, WrongKey
from xdp_compute.privacy import NoisePlan
from xdp_compute.query import QueryPlan
from xdp_compute.query.finalize import finalize_rows, suppress_small_groups
from xdp_compute.sdk.results import QueryResult, query_result

MAX_RESULT_BYTES = 64 << 20


def key_dir(client: Any) -> Path:
    d = Path(client.key_dir or os.environ.get("XDP_KEY_DIR") or Path.home() / ".xdp" / "keys")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def paillier_keys(client: Any, bits: int = DEFAULT_KEY_BITS) -> tuple[PaillierPublic, PaillierPrivate]:
    """The analyst's key pair: loaded from its owner-only file, or created and saved there."""
    path = key_dir(client) / f"paillier-{bits}.json"
    if path.exists():
        priv = load_private_key(path)
    else:
        _, priv = generate_keypair(bits)
        save_private_key(path, priv)
    return priv.public, priv


def decrypt_delivery(priv: PaillierPrivate, delivery: dict[str, Any]) -> QueryResult:
    """Decrypt an encrypted answer and build the same QueryResult as the plain path."""
    res = delivery["result"]
    ct = res.get("ciphertext")
    if not isinstance(ct, str):
        raise Conflict("this encrypted answer was already delivered; the gateway keeps only its digest")
    if res.get("key_fingerprint") != priv.public.fingerprint:
        raise WrongKey("this answer was encrypted under another Paillier key (fingerprint mismatch); "
                       "load the key pair the query was sent with")
    vector = EncryptedVector.from_bytes(base64.b64decode(ct), priv.public, max_bytes=MAX_RESULT_BYTES)
    totals = decrypt_aggregate(priv, vector)
    plan = QueryPlan.from_dict(res["plan"])
    noise = NoisePlan.from_dict(res["noise"])
    payload = finalize_rows(plan, noise, totals, int(res["n_shares"]), float(res["level"]),
                            bool(res["hidden_count"]), res["dataset"])
    suppress_small_groups(plan, payload, int(res["min_group_size"]), bool(res["hidden_count"]))
    payload["nodes"] = res.get("nodes", [])
    plain = dict(delivery)
    plain["result"] = payload
    result = query_result(plain)
    result.delivery = delivery  # the receipt covers what the gateway released: the ciphertext
    return result


def encrypted_query(client: Any, sql: str, epsilon: float, delta: float | None, *, idempotency_key: str | None,
                    level: float, wait: float, dry_run: bool, bits: int = DEFAULT_KEY_BITS) -> Any:
    public, priv = paillier_keys(client, bits)
    body = {"sql": sql, "epsilon": epsilon, "delta": delta, "dry_run": dry_run,
            "idempotency_key": idempotency_key, "level": level, "public_key": public.to_dict()}
    out = client._post("/v1/queries", json=body)
    if dry_run:
        return out
    if out.get("status") != "released":
        out = client._wait(out, wait)
    return decrypt_delivery(priv, out)


def encrypted_score(client: Any, dataset: str, features: list[str], weights: list[float], bias: float,
                    where: str | None, group_by: list[str] | None, epsilon: float, delta: float | None,
                    level: float, idempotency_key: str | None, wait: float) -> QueryResult:
    """CKKS encrypted scoring: mean of w.x + bias per group, decrypted only here."""
    import itertools
    import math

    from xdp_compute.crypto import ckks
    from xdp_compute.errors import InvalidSpec
    from xdp_compute.privacy import NoisyCell, avg_interval, cell_interval

    if len(weights) != len(features):
        raise InvalidSpec("give one weight per feature")
    if not all(math.isfinite(float(w)) for w in [*weights, bias]):
        raise InvalidSpec("weights and bias must be finite")
    meta = client.dataset(dataset)
    cols = {c["name"].lower(): c for c in meta["columns"]}
    lo = hi = float(bias)
    row_bound = abs(float(bias))
    for f, w in zip(features, weights, strict=True):
        c = cols.get(f.lower())
        if c is None or c["type"] not in ("int", "float"):
            raise InvalidSpec(f"feature {f!r} is not a declared numeric column of {dataset!r}")
        a, b = float(w) * c["min"], float(w) * c["max"]
        lo, hi = lo + min(a, b), hi + max(a, b)
        row_bound += abs(float(w)) * max(abs(c["min"]), abs(c["max"]))
    groups = list(group_by or [])
    values = []
    for g in groups:
        c = cols.get(g.lower())
        if c is None or not c.get("values"):
            raise InvalidSpec(f"group column {g!r} has no declared values")
        values.append(c["values"])
    cells = [tuple(x) for x in itertools.product(*values)] if groups else [()]
    n_out = 2 * len(cells)
    sctx = ckks.make_scoring_context(len(features) + 2, n_out)
    enc = ckks.encrypt_weights(sctx, [*map(float, weights), float(bias), 1.0],
                               score_bound=(row_bound + 1.0) * 2.0**24)
    body = {"dataset": dataset, "features": features, "where": where, "group_by": groups or None,
            "epsilon": epsilon, "delta": delta, "level": level, "score_bound": max(row_bound, 1e-9),
            "context": base64.b64encode(sctx.public_bytes).decode(), "weights": base64.b64encode(enc).decode(),
            "idempotency_key": idempotency_key}
    out = client._post("/v1/scores", json=body)
    if out.get("status") != "released":
        out = client._wait(out, wait)
    res = out["result"]
    ct = res.get("ciphertext")
    if not isinstance(ct, str):
        raise Conflict("this encrypted answer was already delivered; the gateway keeps only its digest")
    dec = ckks.decrypt_scores(sctx, base64.b64decode(ct), int(res["n_outputs"]))
    noise = NoisePlan.from_dict(res["noise"])
    sig = {m.name: m.sigma_node2 for m in noise.measurements}
    k, frac, lvl = int(res["n_shares"]), int(res["score_frac_bits"]), float(res["level"])
    rows, intervals = [], []
    for i, cell in enumerate(res["cells"]):
        s_cell = NoisyCell(raw=int(round(float(dec[i]) * 2**frac)), sigma_node2=sig["score"], n_shares=k,
                           scale=2.0**-frac)
        n_cell = NoisyCell(raw=int(round(float(dec[len(cells) + i]))), sigma_node2=sig["count"], n_shares=k)
        mean = avg_interval(s_cell, n_cell, (lo, hi), lvl)
        n_iv = cell_interval(n_cell, lvl, lower=0)
        row: dict[str, Any] = dict(zip(res["group_columns"], cell, strict=True))
        small = n_iv.estimate < int(res["min_group_size"])
        row.update({"score": None if small else mean.estimate, "n": None if small else n_iv.estimate})
        rows.append(row)
        intervals.append({"score": None if small else (mean.low, mean.high),
                          "n": None if small else (n_iv.low, n_iv.high)})
    columns = [*res["group_columns"], "score", "n"]
    result = QueryResult(rows=rows, intervals=intervals, epsilon=res["epsilon"], delta=res["delta"],
                         remaining=out.get("budget_left", {}), columns=columns, level=lvl, job_id=out.get("job_id"),
                         nodes=res.get("nodes", []), receipt=out.get("receipt"), delivery=out)
    return result
