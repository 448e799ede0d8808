"""Analyst-side homomorphic encryption: Paillier keys kept locally, decryption of encrypted answers."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

from xdp_compute.crypto.paillier import (
    DEFAULT_KEY_BITS,
    EncryptedVector,
    PaillierPrivate,
    PaillierPublic,
    decrypt_ring_sum,
    generate_keypair,
    load_private_key,
    save_private_key,
)
from xdp_compute.errors import Conflict, WrongKey
from xdp_compute.privacy import NoisePlan
from xdp_compute.query import QueryPlan
from xdp_compute.query.finalize import count_alias, finalize_rows, suppress_small_groups
from xdp_compute.query.plan import from_ring
from xdp_compute.query.sealed import cell_slots
from xdp_compute.sdk.results import QueryResult, query_result

MAX_RESULT_BYTES = 64 << 20


def key_dir(client: Any) -> Path:
    d = Path(client.key_dir or os.environ.get("XDP_KEY_DIR") or Path.home() / ".xdp" / "keys")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


#: Keys loaded by this process, by their file's identity and state (``paillier_keys``).
_LOADED: dict[tuple[str, int, int, int, int, int], PaillierPrivate] = {}
_LOADED_LOCK = threading.Lock()
_LOADED_MAX = 8


def _file_state(path: Path) -> tuple[str, int, int, int, int, int] | None:
    """The key file as ``lstat`` sees it now (a symlink or a chmod changes it); None if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode


def paillier_keys(client: Any, bits: int = DEFAULT_KEY_BITS) -> tuple[PaillierPublic, PaillierPrivate]:
    """The analyst's key pair: loaded from its owner-only file, or created and saved there.

    A file already loaded, unchanged since (same inode, size, mtime and mode), is not read and
    checked again: loading tests both factors for primality, ~18 ms of every encrypted query
    at 3072 bits (issue #13). A rewritten, replaced, re-linked or re-permissioned file is loaded
    (and refused, if it must be) afresh.
    """
    path = key_dir(client) / f"paillier-{bits}.json"
    state = _file_state(path)
    if state is None:
        _, priv = generate_keypair(bits)
        save_private_key(path, priv)
        return priv.public, priv
    with _LOADED_LOCK:
        priv = _LOADED.get(state)
    if priv is None:
        priv = load_private_key(path)
        with _LOADED_LOCK:
            while len(_LOADED) >= _LOADED_MAX:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[state] = priv
    return priv.public, priv


def decrypt_delivery(priv: PaillierPrivate, delivery: dict[str, Any]) -> QueryResult:
    """Decrypt an encrypted answer and build the same QueryResult as the plain path.

    The gateway has already blanked the cells whose noisy count is below the holders' minimum
    (``suppressed_cells``); they come back as None, like any suppressed group.
    """
    res = delivery["result"]
    if "join_plan" in res:  # a private join's answer (issue #16)
        from xdp_compute.sdk.join import decrypt_join

        return decrypt_join(priv, delivery)
    ct = res.get("ciphertext")
    if not isinstance(ct, str):
        raise Conflict("this encrypted answer was already delivered; the gateway keeps only its digest")
    if res.get("key_fingerprint") != priv.public.fingerprint:
        raise WrongKey("this answer was encrypted under another Paillier key (fingerprint mismatch); "
                       "load the key pair the query was sent with")
    vector = EncryptedVector.from_bytes(base64.b64decode(ct), priv.public, max_bytes=MAX_RESULT_BYTES)
    plan = QueryPlan.from_dict(res["plan"])
    # The nodes' inputs were masked in Z_2^64 (secure aggregation): every slot is a ring value.
    totals = [from_ring(v) for v in decrypt_ring_sum(priv, vector)]
    # Cells the gateway blanked (noisy count below the minimum group size) hold uniform values.
    blanked = sorted({int(c) for c in res.get("suppressed_cells", [])})
    if any(not 0 <= c < len(plan.cells) for c in blanked):
        raise Conflict("the answer names suppressed cells that its plan does not have")
    for slot in cell_slots(plan, blanked):
        totals[slot] = 0
    noise = NoisePlan.from_dict(res["noise"])
    payload = finalize_rows(plan, noise, totals, int(res["n_shares"]), float(res["level"]),
                            bool(res["hidden_count"]), res["dataset"])
    alias = count_alias(plan)
    for c in blanked:
        payload["rows"][c][alias] = None  # suppress_small_groups then blanks the whole row
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
