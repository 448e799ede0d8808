"""CKKS scoring plan: the diagonal / BSGS / fold layout, checked on plaintext slot vectors.

A rotation of a CKKS slot vector by s to the left is np.roll(x, -s); replaying the node's
algorithm on plain numpy vectors checks the layout math for many shapes without HE.
"""

from __future__ import annotations

import numpy as np
import pytest

from xdp_compute.crypto import ckks as C
from xdp_compute.crypto.ckks import InvalidHeContext
from xdp_compute.errors import InvalidSpec


def _rot(x: np.ndarray, step: int) -> np.ndarray:
    return np.roll(x, -step)


def _simulate(plan: C.ScoringPlan, w: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Plaintext replay of bsgs_matvec: the same diagonals, rotations, pairing and fold."""
    padded = np.zeros(plan.period)
    padded[: w.shape[0]] = w
    enc = np.tile(padded, plan.slots // plan.period).astype(complex)
    babies = [enc]
    for _ in range(1, plan.baby):
        babies.append(_rot(babies[-1], 1))
    half = plan.giant // 2 if plan.paired else plan.giant
    sigma = np.where(np.arange(plan.slots) % 2 == 0, 1j, -1j)  # slot values of X^(N/2)
    inner = []
    for j in range(half):
        block = np.roll(plan.diagonals(F, j * plan.baby, plan.baby), j * plan.baby, axis=1).astype(complex)
        if plan.paired:
            high = plan.diagonals(F, (j + half) * plan.baby, plan.baby)
            block = 0.5 * (block + sigma * np.roll(high, (j + half) * plan.baby, axis=1))
        inner.append(sum(block[b] * babies[b] for b in range(plan.baby)))
    result = inner[-1]
    for j in reversed(range(half - 1)):
        result = _rot(result, plan.baby) + inner[j]
    if plan.paired:
        result = result - _rot(sigma * result, half * plan.baby)
    for shift in plan.fold_steps:
        result = result + _rot(result, shift)
    if plan.paired:
        result = result + np.conj(result)
    assert np.max(np.abs(result.imag)) < 1e-6 * max(1.0, np.max(np.abs(result.real)))
    return result.real


@pytest.mark.parametrize(
    ("d", "max_groups", "groups"),
    [
        (10, 5, 5),
        (10, 5, 4),
        (100, 2, 2),
        (4096, 1, 1),
        (2048, 300, 300),
        (4096, 10, 10),
        (3, 100, 100),
        (1, 1, 1),
        (1, 7, 3),
        (17, 17, 17),
        (64, 4096, 4096),
        (5, 16, 2),
    ],
)
def test_plan_computes_every_group_score(d: int, max_groups: int, groups: int) -> None:
    rng = np.random.default_rng(d * 7919 + max_groups)
    plan = C.scoring_plan(d, max_groups, 4096)
    w = rng.normal(size=d)
    F = rng.normal(size=(groups, d))
    slots = _simulate(plan, w, F)
    expected = F @ w
    np.testing.assert_allclose(slots[:groups], expected, rtol=1e-9, atol=1e-9)
    # Every other slot holds either a complete score (replica) or zero: never a partial sum.
    if plan.wide:
        replicated = plan.replicate_outputs(expected)
        np.testing.assert_allclose(slots, replicated, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_allclose(slots[groups:], 0.0, atol=1e-12)


def test_plan_shapes_and_rotation_keys() -> None:
    wide = C.scoring_plan(4096, 10, 4096)
    assert wide.wide and wide.rows == 16 and wide.n_diagonals == 16
    assert wide.fold_steps == (16, 32, 64, 128, 256, 512, 1024, 2048)
    assert wide.baby * wide.giant == 16
    assert wide.paired and wide.baby % 2 == 0  # two real diagonals per complex plaintext
    assert set(wide.rotation_steps) == {1, wide.baby, wide.baby * wide.giant // 2, *wide.fold_steps}
    assert 2 * 8192 - 1 in wide.galois_elements()  # conjugation
    assert len(wide.galois_elements()) == len(wide.rotation_steps) + 1
    tall = C.scoring_plan(3, 100, 4096)
    assert not tall.wide and tall.n_diagonals == 4 and tall.fold_steps == ()
    one = C.scoring_plan(1, 1, 4096)
    assert one.rotation_steps == () and one.galois_elements() == ()


def test_plan_rejects_impossible_shapes() -> None:
    with pytest.raises(InvalidSpec):
        C.scoring_plan(4097, 1, 4096)
    with pytest.raises(InvalidSpec):
        C.scoring_plan(1, 5000, 4096)
    with pytest.raises(InvalidSpec):
        C.scoring_plan(0, 1, 4096)
    with pytest.raises(InvalidSpec):
        C.scoring_plan(3, 3, 3000)


def test_check_parameters_enforces_the_security_floor() -> None:
    C.check_parameters(8192, (60, 40, 60))
    C.check_parameters(8192, (60, 40, 40, 40, 38))  # exactly 218
    C.check_parameters(16384, (60,) * 7)
    with pytest.raises(C.UnsafeHeContext, match="218"):
        C.check_parameters(8192, (60, 40, 40, 40, 39))
    with pytest.raises(C.UnsafeHeContext, match="438"):
        C.check_parameters(16384, (60,) * 8)
    with pytest.raises(C.UnsafeHeContext, match="not allowed"):
        C.check_parameters(4096, (40, 20, 40))
    with pytest.raises(InvalidHeContext, match="level"):
        C.check_parameters(8192, (60, 60))
    assert issubclass(C.UnsafeHeContext, InvalidHeContext)
    assert C.UnsafeHeContext("x").status == 400


def test_make_scoring_context_refuses_weak_or_oversized_parameters() -> None:
    with pytest.raises(InvalidSpec):
        C.make_scoring_context(3, 3, poly_modulus_degree=4096)
    with pytest.raises(InvalidSpec):
        C.make_scoring_context(3, 3, coeff_mod_bit_sizes=(60, 60, 60, 60))
