"""The collusion margin: noise calibrated so that t - c honest shares carry the target."""

from __future__ import annotations

import pytest

from xdp_compute.crypto.secagg import default_threshold
from xdp_compute.domain.policy import noise_shares
from xdp_compute.privacy import Measurement, plan_noise
from xdp_compute.privacy.accountant import ddg_rho, epsilon_delta_to_rho


@pytest.mark.parametrize("n, honest", [(1, 1), (2, 2), (3, 1), (4, 2), (5, 2), (10, 5)])
def test_default_margin_is_one_colluder_from_three_nodes(n: int, honest: int) -> None:
    s = noise_shares(n, default_threshold(n), None)
    assert s.colluding == (1 if n >= 3 else 0) and s.honest == honest
    assert s.decision().allowed


def test_a_margin_that_leaves_no_honest_share_is_denied() -> None:
    s = noise_shares(3, 2, 2)
    assert s.honest == 0 and not s.decision().allowed and s.decision().rule == "collusion"


@pytest.mark.parametrize("n", [3, 5, 9])
def test_the_shares_of_the_honest_survivors_alone_meet_the_target(n: int) -> None:
    # One colluding survivor gives the analyst its share, so only t - 1 shares remain unknown:
    # their noise alone must stay within the query's rho (it used to be 1.35x epsilon at n = 3).
    eps, delta = 1.0, 1e-8
    s = noise_shares(n, default_threshold(n), None)
    m = Measurement("count", 1, 4, 1)
    noise = plan_noise(eps, delta, [m], s.honest)
    s2 = noise.measurements[0].sigma_node2
    assert ddg_rho(1, 1, s2, s.honest, 4) <= epsilon_delta_to_rho(eps, delta) * (1 + 1e-9)
    # Without the margin the same t - 1 honest shares would spend more than the budget.
    unsafe = plan_noise(eps, delta, [m], s.threshold).measurements[0].sigma_node2
    assert ddg_rho(1, 1, unsafe, s.honest, 4) > epsilon_delta_to_rho(eps, delta)


@pytest.mark.parametrize("name", ["", "<script>", "clinic\u200b-0", "ｃｌｉｎｉｃ", "a" * 64, "-x", "x\n", "x y"])
def test_node_names_that_read_alike_or_carry_markup_are_refused(name: str) -> None:
    from xdp_compute.domain.names import check_node_name
    from xdp_compute.errors import BadRequest

    with pytest.raises(BadRequest):
        check_node_name(name)


@pytest.mark.parametrize("region, ok", [("CN-FJ", True), ("DE", True), ("cn-fj", False), ("", False),
                                        ("<b>", False), ("CN-FJ\n", False), ("ＣＮ", False)])
def test_regions_are_iso_codes(region: str, ok: bool) -> None:
    from xdp_compute.domain.names import check_region
    from xdp_compute.errors import BadRequest

    if ok:
        assert check_region(region) == region
    else:
        with pytest.raises(BadRequest):
            check_region(region)
