"""Layout of the encrypted G x d product: diagonals, baby-step/giant-step split and its cost model.

Matrix-vector product: the diagonal method of Halevi & Shoup (CRYPTO 2014, §4.1) with their
baby-step/giant-step split (§4.2, "BSGS"), adapted to a G x d matrix with the "hybrid" fold of
Juvekar, Vaikuntanathan & Chandrakasan (GAZELLE, USENIX Security 2018, §5.2):

* The SDK encrypts w zero-padded to P = 2^ceil(log2 d) and repeated across all slots, so a
  rotation by i gives slot k the weight w[(k + i) mod P].
* Wide case (G' = 2^ceil(log2 max_groups) <= P): G' generalised diagonals
  D_i[k] = F[k mod G', (k + i) mod P]; z = sum_i D_i * rot(w, i); then log2(P / G') rotate-and-add
  steps (shifts G', 2G', ..., P/2) sum each row's P/G' partial products. Because z has period P
  over the whole slot ring, every slot ends holding a *complete* row sum (slot k = score of row
  k mod G'): no slot holds a partial inner product, so no masking level is needed.
* Tall case (G' > P): P diagonals D_i[k] = F[k, (k + i) mod P] over the first G slots; no fold.
* BSGS: i = j*B + b; sum_i D_i * rot(w, i) = sum_j rot(sum_b rot(D_i, -jB) * rot(w, b), jB).
  Baby rotations act on the fresh ciphertext (B - 1 of them, key for step 1); each inner sum is
  rescaled first so giant rotations (Horner form, key for step B) and the fold work on one fewer
  prime, where SEAL's key switching is ~2x cheaper.
* Complex pairing: CKKS slots are complex and the diagonals real, so one complex plaintext
  carries the diagonals of giant steps j and j + m/(2B) (the second times the +-i slot pattern
  of the monomial X^(N/2)); this halves encodings, multiplications and rescales, for one extra
  rotation (by m/2) and one conjugation that takes the real part at the end (details in
  :func:`~xdp_compute.crypto.ckks.evaluate.bsgs_matvec`).
* B and pairing minimise a cost model measured with SEAL (rotations on two primes ~2x one
  prime, rescale ~0.55, encode ~0.6) plus a charge per Galois key (context size).

The context holds Galois keys for exactly the steps this plan uses (1, B, m/2 and the fold
shifts, plus conjugation when paired; :meth:`ScoringPlan.galois_elements`), not TenSEAL's
default set of all powers of two, which is both larger and more than the node needs. SDK and
node derive the same plan from the same public inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xdp_compute.crypto.ckks.params import DEFAULT_POLY_MODULUS_DEGREE
from xdp_compute.errors import InvalidSpec

# Measured with SEAL at N = 8192, (60, 40, 60), in units of one rotation on one prime.
_ROTATION_COST_TOP = 2.0  # rotation of the fresh (two-prime) ciphertext
_RESCALE_COST = 0.55
_ENCODE_COST = 0.6  # encoding one diagonal at the top level (+ multiply_plain)
_KEY_COST = 1.0  # preference against larger contexts, per Galois key


def _baby_giant_cost(baby: int, giant: int, paired: bool) -> float:
    baby_cost = _ROTATION_COST_TOP * (baby - 1)
    if not paired:
        return baby_cost + (giant - 1) + _RESCALE_COST * giant + _ENCODE_COST * baby * giant
    half = giant // 2
    # Horner over half the giant steps, one rotation by half*B, one conjugation, one monomial.
    return baby_cost + (half - 1) + 2.2 + _RESCALE_COST * half + _ENCODE_COST * baby * half


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@dataclass(frozen=True)
class ScoringPlan:
    """Layout of the encrypted G x d product; SDK and node derive it from the same inputs."""

    n_features: int
    max_groups: int
    slots: int
    period: int  # P: weights repeat every P slots
    wide: bool  # G' <= P: fold needed, outputs replicated with period ``rows``
    rows: int  # G' (wide) or ``slots`` (tall)
    n_diagonals: int  # m
    baby: int  # B
    giant: int  # m // B
    fold_steps: tuple[int, ...]
    paired: bool = False  # two real diagonals per complex plaintext (see bsgs_matvec)

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        """Left-rotation steps the node uses; the context needs a Galois key for each."""
        steps = set(self.fold_steps)
        if self.baby > 1:
            steps.add(1)
        horner = self.giant // 2 if self.paired else self.giant
        if horner > 1:
            steps.add(self.baby)
        if self.paired:
            steps.add(self.baby * (self.giant // 2))
        return tuple(sorted(steps))

    def galois_elements(self) -> tuple[int, ...]:
        """SEAL Galois elements for :attr:`rotation_steps` (and conjugation when paired)."""
        degree = 2 * self.slots
        elements = [galois_elt(step, degree) for step in self.rotation_steps]
        if self.paired:
            elements.append(2 * degree - 1)  # complex conjugation: x -> x^(2N - 1)
        return tuple(elements)

    def diagonals(self, feature_sums: np.ndarray, start: int, count: int) -> np.ndarray:
        """Generalised diagonals start..start+count-1 (rows of length ``slots``) of the G x d matrix.

        D_i[k] = F[k mod rows, (k + i) mod P], zero outside the matrix (padding rows/columns).
        """
        k = np.arange(self.slots)
        n_rows, d = feature_sums.shape
        row = k % self.rows
        col = (k[None, :] + np.arange(start, start + count)[:, None]) % self.period
        valid = (row < n_rows)[None, :] & (col < d)
        values = feature_sums[np.minimum(row, n_rows - 1)[None, :], np.minimum(col, d - 1)]
        return np.where(valid, values, 0.0)

    def replicate_outputs(self, per_group: np.ndarray) -> np.ndarray:
        """Spread one value per group over every slot that holds that group's score."""
        out = np.zeros(self.slots)
        k = np.arange(self.slots)
        row = k % self.rows
        valid = row < per_group.shape[0]
        out[valid] = per_group[row[valid]]
        return out


def scoring_plan(
    n_features: int, max_groups: int, slots: int = DEFAULT_POLY_MODULUS_DEGREE // 2
) -> ScoringPlan:
    """Derive the diagonal / BSGS layout for ``max_groups`` x ``n_features`` with ``slots`` slots."""
    for name, value in (("n_features", n_features), ("max_groups", max_groups), ("slots", slots)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidSpec(f"{name} must be a positive integer")
    if slots & (slots - 1):
        raise InvalidSpec("slots must be a power of two")
    if n_features > slots or max_groups > slots:
        raise InvalidSpec(f"at most {slots} features and {slots} groups fit one ciphertext")
    period = _next_pow2(n_features)
    groups = _next_pow2(max_groups)
    if groups <= period:
        wide, rows, m = True, groups, groups
        fold = tuple(groups << s for s in range((period // groups).bit_length() - 1))
    else:
        wide, rows, m, fold = False, slots, period, ()
    # Pairing needs an even B (rotations by multiples of B keep the +-i pattern aligned) and
    # at least two giant steps to pair.
    options = [
        ScoringPlan(n_features, max_groups, slots, period, wide, rows, m, b, m // b, fold, paired)
        for b in (1 << e for e in range(m.bit_length()))
        for paired in (False, True)
        if not paired or (b % 2 == 0 and m // b >= 2)
    ]
    # Every Galois key adds ~0.35 MB to the context the analyst uploads: charge it too.
    return min(
        options,
        key=lambda o: (
            _baby_giant_cost(o.baby, o.giant, o.paired) + _KEY_COST * len(o.galois_elements()),
            o.baby,
            o.paired,
        ),
    )


def galois_elt(step: int, poly_modulus_degree: int) -> int:
    # SEAL GaloisTool::get_elt_from_step: a left rotation by step > 0 is x -> x^(3^step mod 2N).
    return pow(3, step, 2 * poly_modulus_degree)
