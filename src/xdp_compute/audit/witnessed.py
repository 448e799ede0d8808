"""The auditor's witness policy: a quorum of pinned witnesses must vouch for the whole log, freshly.

Each witness (a node) cosigns the release log's C2SP checkpoint only when it extends the last
one it cosigned (``audit/witness.py``). An auditor pins the witnesses' keys (vkeys, type 0x04)
and a quorum K, and checks against the entries it downloaded:

- a pinned witness's valid cosignature on a size larger than the download: **truncated tail**
  (the witness saw more entries than the log now shows);
- a cosigned root that the downloaded entries do not reproduce: **history rewritten** (RFC
  9162 §2.1.1 root at that size differs);
- fewer than K pinned witnesses vouch for the full download (a witness's cosignature on size
  s vouches for every size up to s: it checked consistency): **not witnessed** — a rewritten
  or truncated-then-regrown log cannot get honest witnesses' cosignatures;
- the K-th freshest of those cosignatures is older than ``max_age`` seconds: **stale** — a log
  rolled back to an earlier state that witnesses once cosigned gets no fresh cosignature, as
  honest witnesses refuse to cosign a smaller head and re-cosign the real one periodically.

Any single pinned witness's contradiction is reported even without a quorum: it is evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdp_compute.audit.merkle import MerkleTree
from xdp_compute.audit.note import ALG_COSIGNATURE_V1, Checkpoint, parse_note, parse_vkey, verify_cosignature
from xdp_compute.errors import ProofError

__all__ = ["PinnedWitness", "check_witnesses", "default_quorum", "parse_witness_file"]


@dataclass(frozen=True, slots=True)
class PinnedWitness:
    name: str
    public_key: bytes


def parse_witness_file(text: str) -> list[PinnedWitness]:
    """One vkey per line (``#`` comments and blank lines ignored); each must be a cosignature key."""
    pinned: dict[str, PinnedWitness] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, alg, key = parse_vkey(line)
        except ProofError as exc:
            raise ProofError(f"witness file line {n}: {exc.detail}") from None
        if alg != ALG_COSIGNATURE_V1:
            raise ProofError(f"witness file line {n}: {name} is not a cosignature/v1 key (type 0x04)")
        if name in pinned and pinned[name].public_key != key:
            raise ProofError(f"witness file pins two keys for {name}")
        pinned[name] = PinnedWitness(name, key)
    return list(pinned.values())


def default_quorum(pinned: int) -> int:
    """A majority of the pinned witnesses."""
    return pinned // 2 + 1


def check_witnesses(tree: MerkleTree, n: int, origin: str, cosigned: Sequence[str],
                    pinned: Sequence[PinnedWitness], quorum: int | None, now: float, max_age: float | None,
                    add: Callable[[str, int | None], None]) -> None:
    """Step 7 of the verifier: report through ``add(message, bad_index)`` (see module doc)."""
    if not pinned:
        add("witness policy: no witnesses are pinned", None)
        return
    k = default_quorum(len(pinned)) if quorum is None else quorum
    if not 1 <= k <= len(pinned):
        add(f"witness policy: quorum {k} is not between 1 and the {len(pinned)} pinned witnesses", None)
        return
    by_name = {w.name: w for w in pinned}
    vouched: dict[str, int] = {}    # witness -> largest size it cosigned consistently with the download
    freshest: dict[str, int] = {}   # witness -> time of its cosignature on that size
    for j, note in enumerate(cosigned):
        try:
            body, sigs = parse_note(note)
            cp = Checkpoint.from_body(body)
        except ProofError as exc:
            add(f"cosigned checkpoint #{j} is malformed: {exc.detail}", None)
            continue
        if cp.origin != origin:
            continue  # another log's checkpoint: says nothing about this one
        for sig in sigs:
            w = by_name.get(sig.name)
            if w is None:
                continue  # the log's own signature or an unpinned witness: ignored (tlog-witness)
            try:
                cs = verify_cosignature(body, sig, w.name, w.public_key)
            except ProofError as exc:
                if sig.name == w.name and len(sig.signature) == 72:
                    add(f"bad cosignature: {exc.detail} (size {cp.tree_size})", None)
                continue
            if cp.tree_size > n:
                add(f"truncated tail: witness {w.name} cosigned a log of size {cp.tree_size} but only {n} "
                    "entries were downloaded", n)
                continue
            if tree.root(cp.tree_size) != cp.root_hash:
                add(f"history rewritten: witness {w.name} cosigned a root for size {cp.tree_size} that the "
                    "downloaded entries do not reproduce", None)
                continue
            if cp.tree_size > vouched.get(w.name, -1) or (
                    cp.tree_size == vouched[w.name] and cs.timestamp > freshest[w.name]):
                vouched[w.name], freshest[w.name] = cp.tree_size, cs.timestamp
    if n == 0:
        return
    full = sorted((freshest[name] for name, size in vouched.items() if size == n), reverse=True)
    if len(full) < k:
        best = sorted(vouched.values(), reverse=True)
        covered = best[k - 1] if len(best) >= k else 0
        add(f"not witnessed: only {len(full)} of the {len(pinned)} pinned witnesses cosigned the log's "
            f"{n} entries, quorum is {k}; a quorum vouches for {covered} entries"
            + (f" (entries {covered}..{n - 1} lack it)" if covered < n else ""), None)
        return
    kth = full[k - 1]
    if max_age is not None and max_age > 0 and now - kth > max_age:
        add(f"stale: the newest quorum of witness cosignatures on size {n} is {now - kth:.0f} s old "
            f"(limit {max_age:.0f} s); the log may have been rolled back, or its witnesses are offline", None)
