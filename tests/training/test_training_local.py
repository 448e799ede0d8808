"""A node's DP-SGD round: per-sample clipping, Poisson sampling, noise, Opacus accounting, budget."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from torch import nn

from xdp_compute.errors import BudgetExhausted, InvalidSpec
from xdp_compute.training.local import (
    EVAL_LOSS_BOUND,
    LocalTrainer,
    NodePrivacyState,
    clipped_grad_sum_linear,
    clipped_grad_sum_vmap,
    epsilon_for_history,
    plan_privacy,
    poisson_sample,
    poisson_schedule,
    run_dp_sgd,
    torch_generator,
)
from xdp_compute.training.spec import TrainingSpec
from xdp_compute.training.zoo import (
    build_model,
    flatten_params,
    init_params,
    load_flat_params,
    per_sample_loss,
)

torch.set_num_threads(1)
# Opacus warns when the best RDP order is at the end of its grid; the bound is still valid.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


def spec(model: str = "logreg", **kw: Any) -> TrainingSpec:
    d: dict[str, Any] = {
        "dataset": "d",
        "model": model,
        "features": ["a"],
        "label": "y",
        "delta": 1e-5,
        "target_epsilon": 3.0,
        "rounds": 3,
        "batch_size": 16,
    }
    d.update(kw)
    return TrainingSpec.from_dict(d)


def toy(n: int = 120, d: int = 4, kind: str = "bce", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, d)).astype(np.float32)
    s = X @ rng.normal(size=d) - 0.5
    if kind == "bce":
        y = (s > 0).astype(np.float32)
    elif kind == "ce":
        y = np.digitize(s, np.quantile(s, [1 / 3, 2 / 3])).astype(np.int64)
    else:
        y = np.clip((s - s.min()) / (s.max() - s.min()), 0, 1).astype(np.float32)
    return X, y


# ---- per-sample gradients ------------------------------------------------------------------------
def loop_clipped_sum(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, kind: str, C: float
) -> list[torch.Tensor]:
    """Reference: one backward per row, clip as Opacus does, sum."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(X.shape[0]):
        model.zero_grad()
        per_sample_loss(model(X[i : i + 1]), y[i : i + 1], kind).sum().backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        f = min(1.0, C / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += f * g
    return total


@pytest.mark.parametrize(
    ("model", "n_classes", "kw", "kind"),
    [
        ("logreg", 2, {}, "bce"),
        ("softmax", 3, {}, "ce"),
        ("linreg", 0, {}, "mse"),
        ("mlp", 3, {"hidden": [6, 5]}, "ce"),
        ("mlp", 0, {"hidden": [7]}, "mse"),
    ],
)
def test_closed_form_and_vmap_per_sample_clipping_match_a_loop(
    model: str, n_classes: int, kw: dict[str, Any], kind: str
) -> None:
    s = spec(model, **kw)
    m = build_model(s, 4, n_classes)
    load_flat_params(
        m,
        init_params(s, 4, n_classes, seed=3)
        + np.random.default_rng(1).normal(0, 0.5, size=sum(p.numel() for p in m.parameters())),
    )
    X, y = toy(24, 4, kind)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    ref_unclipped = loop_clipped_sum(m, Xt, yt, kind, 1e9)
    norms = []
    for i in range(24):  # pick C at the median per-sample norm so half the rows are clipped
        g = loop_clipped_sum(m, Xt[i : i + 1], yt[i : i + 1], kind, 1e9)
        norms.append(float(torch.sqrt(sum((t * t).sum() for t in g))))
    C = float(np.median(norms))
    ref = loop_clipped_sum(m, Xt, yt, kind, C)
    lin = clipped_grad_sum_linear(list(m), Xt, yt, kind, C)
    vm = clipped_grad_sum_vmap(m, Xt, yt, kind, C)
    for r, a, b, u in zip(ref, lin, vm, ref_unclipped, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b, r, rtol=1e-4, atol=1e-5)
    assert not all(torch.allclose(r, u) for r, u in zip(ref, ref_unclipped, strict=True))  # clipping bit


def test_clipped_sum_norm_is_bounded_by_batch_times_c() -> None:
    s = spec("mlp", hidden=[8])
    m = build_model(s, 4, 2)
    X, y = toy(50, 4, "ce")
    y = (y > 0).astype(np.int64)
    g = clipped_grad_sum_linear(list(m), torch.from_numpy(X * 50), torch.from_numpy(y), "ce", 0.01)
    assert float(torch.sqrt(sum((t * t).sum() for t in g))) <= 50 * 0.01 * (1 + 1e-5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_one_noiseless_step_equals_opacus_dp_optimizer() -> None:
    """Same clipping rule and normalisation as Opacus (mean loss, expected batch size)."""
    s = spec("mlp", hidden=[5])
    X, y = toy(40, 4, "ce")
    flat = init_params(s, 4, 3, seed=5)
    ours = build_model(s, 4, 3)
    load_flat_params(ours, flat)
    run_dp_sgd(
        ours,
        torch.from_numpy(X),
        torch.from_numpy(y),
        "ce",
        steps=1,
        sample_rate=1.0,
        expected_batch_size=32.0,
        lr=0.7,
        max_grad_norm=0.05,
        noise_multiplier=0.0,
        sample_gen=torch_generator(0),
        noise_gen=torch_generator(1),
        method="linear",
    )
    theirs = build_model(s, 4, 3)
    load_flat_params(theirs, flat)
    gsm = GradSampleModule(theirs, loss_reduction="mean")
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.7),
        noise_multiplier=0.0,
        max_grad_norm=0.05,
        expected_batch_size=32,
        loss_reduction="mean",
    )
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    opt.step()
    np.testing.assert_allclose(flatten_params(ours), flatten_params(theirs), rtol=0, atol=1e-6)
    assert not np.allclose(flatten_params(ours), flat)


MR = 120  # the declared max_rows of the simulated node


# ---- Poisson sampling and noise -------------------------------------------------------------------
@pytest.mark.parametrize(("n", "q"), [(2000, 0.01), (400, 0.3)])  # geometric-gap path, mask path
def test_poisson_sample_includes_each_row_independently_with_probability_q(n: int, q: float) -> None:
    gen = torch_generator(12345)
    draws = 3000
    counts = np.zeros(n)
    sizes = []
    for _ in range(draws):
        idx = poisson_sample(n, q, gen)
        assert np.all(np.diff(idx) > 0) and (idx.size == 0 or (idx[0] >= 0 and idx[-1] < n))
        counts[idx] += 1
        sizes.append(idx.size)
    sizes_a = np.array(sizes)
    # Batch size ~ Binomial(n, q): mean within 6 standard errors, variance within 15%.
    assert abs(sizes_a.mean() - n * q) < 6 * math.sqrt(n * q * (1 - q) / draws)
    assert abs(sizes_a.var() / (n * q * (1 - q)) - 1) < 0.15
    # Each row's inclusion count ~ Binomial(draws, q): the chi-square statistic over rows is
    # ~ chi2(n) (mean n, sd sqrt(2n)); 6 sd covers it. Also first/last rows are not special.
    exp = draws * q
    chi2 = float((((counts - exp) ** 2) / (exp * (1 - q))).sum())
    assert abs(chi2 - n) < 6 * math.sqrt(2 * n)
    assert abs(counts[:10].mean() - exp) < 6 * math.sqrt(exp / 10) and abs(
        counts[-10:].mean() - exp
    ) < 6 * math.sqrt(exp / 10)


def test_poisson_sample_edges() -> None:
    gen = torch_generator(1)
    assert poisson_sample(0, 0.5, gen).size == 0
    assert poisson_sample(7, 1.0, gen).tolist() == list(range(7))
    assert poisson_sample(10, 1e-12, gen).size == 0
    assert poisson_schedule(0, 0.5, 10, gen) == [] and poisson_schedule(5, 0.5, 0, gen) == []


def test_noise_has_std_sigma_times_c_over_expected_batch() -> None:
    """With zero gradients, one step moves parameters by exactly -lr * N(0, (sigma C)^2) / B."""
    s = spec("linreg")
    d = 4999
    m = build_model(s, d, 0)
    load_flat_params(m, np.zeros(d + 1))
    X = torch.zeros(10, d)
    y = torch.zeros(10)  # prediction 0 == label 0: every per-sample gradient is zero
    sigma, C, lr, B = 1.7, 0.3, 2.0, 8.0
    run_dp_sgd(
        m,
        X,
        y,
        "mse",
        steps=1,
        sample_rate=0.5,
        expected_batch_size=B,
        lr=lr,
        max_grad_norm=C,
        noise_multiplier=sigma,
        sample_gen=torch_generator(3),
        noise_gen=torch_generator(4),
    )
    step = flatten_params(m)
    want = lr * sigma * C / B
    # 5000 Gaussian draws: sample sd within 5% (5 standard errors), mean within 5 standard errors.
    assert abs(step.std() / want - 1) < 0.05
    assert abs(step.mean()) < 5 * want / math.sqrt(step.size)


# ---- planning and accounting --------------------------------------------------------------------
def test_plan_uses_opacus_get_noise_multiplier_with_planned_steps() -> None:
    s = spec(rounds=4, local_epochs=2, batch_size=16)
    plan = plan_privacy(s, 100, 1e-5)
    q = 16 / 100
    assert plan.sample_rate == q
    assert plan.steps_per_round == 2 * math.ceil(1 / q) == 14
    assert plan.planned_steps == 56
    assert plan.expected_batch_size == pytest.approx(16.0)
    sigma = get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-5, sample_rate=q, steps=56, accountant="rdp"
    )
    assert plan.noise_multiplier == sigma
    acc = RDPAccountant()
    acc.history = [(sigma, q, 56)]
    assert plan.planned_epsilon == pytest.approx(acc.get_epsilon(1e-5), abs=1e-12)
    assert 3.0 - 0.011 < plan.planned_epsilon <= 3.0
    assert plan_privacy(spec(batch_size=500), 100, 1e-5).sample_rate == 1.0  # capped


def test_epsilon_for_history_equals_opacus_accountant() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        hist = [
            (float(rng.uniform(0.6, 4)), float(rng.uniform(0.01, 0.6)), int(rng.integers(1, 300)))
            for _ in range(int(rng.integers(1, 4)))
        ]
        acc = RDPAccountant()
        acc.history = list(hist)
        assert epsilon_for_history(hist, 1e-6) == pytest.approx(acc.get_epsilon(1e-6), abs=1e-9)


def test_rounds_record_opacus_rdp_epsilon_for_the_steps_taken() -> None:
    s = spec(rounds=3, batch_size=16)
    X, y = toy(120, 4, "bce")
    t = LocalTrainer(s, 4, 2, seed=1, max_rows=MR)
    g = init_params(s, 4, 2)
    state: NodePrivacyState | None = None
    acc = RDPAccountant()
    prev = 0.0
    for r in range(3):
        res = t.run_round(g, X, y, state, epsilon_budget_left=10.0)
        plan = res.state.plan
        assert plan is not None
        for _ in range(res.steps):  # what Opacus's optimizer hook would do, step by step
            acc.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        assert res.state.history == tuple(acc.history)
        assert abs(res.epsilon - acc.get_epsilon(1e-5)) < 1e-6
        assert res.epsilon_round == pytest.approx(res.epsilon - prev, abs=1e-12)
        assert res.update.dtype == np.float64 and res.update.shape == g.shape and np.any(res.update != 0)
        assert res.state.rounds_done == r + 1 and res.steps == plan.steps_per_round == 8
        prev = res.epsilon
        g = g + res.update
        # The state survives a JSON round trip unchanged (the node persists it between rounds).
        state = NodePrivacyState.from_dict(json.loads(json.dumps(res.state.to_dict())))
        assert state == res.state
    assert state is not None and state.epsilon() <= 3.0
    with pytest.raises(BudgetExhausted, match="planned rounds"):
        t.run_round(g, X, y, state, epsilon_budget_left=10.0)


def test_round_refused_when_budget_left_is_short_and_nothing_happens() -> None:
    s = spec(rounds=2)
    X, y = toy(120, 4, "bce")
    t = LocalTrainer(s, 4, 2, seed=1, max_rows=MR)
    g = init_params(s, 4, 2)
    _plan, after, cost = t.next_round(None)
    before_params = flatten_params(t.model)
    with pytest.raises(BudgetExhausted) as e:
        t.run_round(g + 1.0, X, y, None, epsilon_budget_left=cost * 0.999)
    assert e.value.status == 403
    assert e.value.extra["epsilon_needed"] == pytest.approx(cost)
    np.testing.assert_array_equal(flatten_params(t.model), before_params)  # never loaded, never trained
    res = t.run_round(g, X, y, None, epsilon_budget_left=cost)  # exactly enough is enough
    assert res.epsilon == pytest.approx(after) and res.epsilon_round == pytest.approx(cost)
    st = res.state
    _, _, cost2 = t.next_round(st)
    with pytest.raises(BudgetExhausted):
        t.run_round(g, X, y, st, epsilon_budget_left=cost2 / 2)
    with pytest.raises(BudgetExhausted):
        t.run_round(g, X, y, st, epsilon_budget_left=float("nan"))
    assert st.rounds_done == 1 and st.steps_taken == res.steps


def test_delta_rules() -> None:
    X, y = toy(50, 4, "bce")
    with pytest.raises(InvalidSpec, match="delta is required"):
        LocalTrainer(spec(delta=None), 4, 2, max_rows=MR)
    t = LocalTrainer(spec(delta=None), 4, 2, default_delta=1e-6, max_rows=MR)
    assert t.delta == 1e-6
    # The rule is on the declared max_rows, not on the rows given: 0.05 >= 1/50 is refused even
    # with 3 rows, and 0.01 < 1/50 is fine with 0 rows.
    t = LocalTrainer(spec(delta=0.05), 4, 2, max_rows=50)
    with pytest.raises(InvalidSpec, match="below 1/max_rows"):
        t.run_round(np.zeros(5), X[:3], y[:3], None, 10.0)
    t = LocalTrainer(spec(delta=0.01), 4, 2, max_rows=50)
    assert t.run_round(np.zeros(5), X[:0], y[:0], None, 10.0).steps > 0


def test_unreachable_epsilon_and_bad_max_rows_are_invalid() -> None:
    with pytest.raises(InvalidSpec, match="max_rows"):
        plan_privacy(spec(), 0, 1e-5)
    with pytest.raises(InvalidSpec, match="cannot be reached"):
        plan_privacy(spec(target_epsilon=1e-4, rounds=1000, batch_size=1000), 1000, 1e-9)


def test_bad_inputs_to_a_round() -> None:
    X, y = toy(50, 4, "bce")
    t = LocalTrainer(spec(), 4, 2, seed=0, max_rows=MR)
    with pytest.raises(InvalidSpec, match="shape"):
        t.run_round(np.zeros(5), X[:, :3], y, None, 10.0)
    with pytest.raises(InvalidSpec, match="same number"):
        t.run_round(np.zeros(5), X, y[:10], None, 10.0)
    with pytest.raises(InvalidSpec, match="needs 5"):
        t.run_round(np.zeros(6), X, y, None, 10.0)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(InvalidSpec, match="NaN"):
        t.run_round(np.zeros(5), Xn, y, None, 10.0)


def test_seeded_rounds_reproduce_and_os_seeded_rounds_differ() -> None:
    s = spec()
    X, y = toy(120, 4, "bce")
    g = init_params(s, 4, 2)
    a = LocalTrainer(s, 4, 2, seed=9, max_rows=MR).run_round(g, X, y, None, 10.0).update
    b = LocalTrainer(s, 4, 2, seed=9, max_rows=MR).run_round(g, X, y, None, 10.0).update
    c = LocalTrainer(s, 4, 2, max_rows=MR).run_round(g, X, y, None, 10.0).update
    d = LocalTrainer(s, 4, 2, max_rows=MR).run_round(g, X, y, None, 10.0).update
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c, d)


def test_vmap_path_trains_identically_to_closed_form() -> None:
    s = spec("softmax")
    X, y = toy(120, 4, "ce")
    g = init_params(s, 4, 3)
    a = LocalTrainer(s, 4, 3, seed=2, per_sample="linear", max_rows=MR).run_round(g, X, y, None, 10.0).update
    b = LocalTrainer(s, 4, 3, seed=2, per_sample="vmap", max_rows=MR).run_round(g, X, y, None, 10.0).update
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


# ---- evaluation ----------------------------------------------------------------------------------
def test_evaluate_returns_raw_sums_with_bounded_per_row_loss() -> None:
    s = spec()
    X, y = toy(60, 4, "bce")
    t = LocalTrainer(s, 4, 2, max_rows=MR)
    flat = np.array([40.0, -40.0, 0.0, 0.0, 0.0])
    ev = t.evaluate(flat, X, y)
    m = build_model(s, 4, 2)
    load_flat_params(m, flat)
    with torch.no_grad():
        out = m(torch.from_numpy(X)).squeeze(1)
        loss = per_sample_loss(out[:, None], torch.from_numpy(y), "bce").clamp(max=EVAL_LOSS_BOUND)
    assert ev.count == 60 and ev.sq_err_sum is None
    assert ev.correct == int(((out > 0).float() == torch.from_numpy(y)).sum())
    assert ev.loss_sum == pytest.approx(float(loss.sum()), rel=1e-5)
    assert ev.loss_sum <= 60 * EVAL_LOSS_BOUND
    reg = LocalTrainer(spec("linreg"), 4, 0, max_rows=MR)
    Xr, yr = toy(30, 4, "mse")
    er = reg.evaluate(np.array([0.0, 0.0, 0.0, 0.0, 5.0]), Xr, yr)  # predicts 5 -> clipped to 1
    assert er.correct is None and er.sq_err_sum == pytest.approx(float(((1 - yr) ** 2).sum()), rel=1e-5)


# ---- a plan from public inputs only (issue #11) --------------------------------------------------
@pytest.mark.parametrize("rows", [0, 1, 7, 120, 500])
def test_what_a_round_reports_is_the_same_for_any_number_of_rows(rows: int) -> None:
    """Steps, cost, epsilon and the state's history depend on the spec, delta and max_rows only:
    a node with no rows (or more than it declared) runs the same plan and reports the same."""
    s = spec(rounds=2, batch_size=16)
    X, y = toy(max(rows, 1), 4, "bce")
    X, y = X[:rows], y[:rows]
    ref = LocalTrainer(s, 4, 2, max_rows=MR, seed=3).run_round(init_params(s, 4, 2), *toy(120, 4, "bce"), None, 10.0)
    res = LocalTrainer(s, 4, 2, max_rows=MR, seed=3).run_round(init_params(s, 4, 2), X, y, None, 10.0)
    assert (res.steps, res.epsilon, res.epsilon_round, res.delta) == (
        ref.steps, ref.epsilon, ref.epsilon_round, ref.delta)
    assert res.state.history == ref.state.history and res.state.plan == ref.state.plan
    assert res.update.shape == ref.update.shape and np.all(np.isfinite(res.update))
    if rows == 0:
        assert np.any(res.update != 0)  # a dummy contribution still carries its noise


def test_runs_of_empty_steps_carry_the_summed_noise() -> None:
    """With q tiny (a loose max_rows), almost every step is empty; merging a run of k empty steps
    into one draw must give the same total noise: sd sqrt(steps) * lr * sigma * C / B."""
    s = spec("linreg")
    d = 3999
    m = build_model(s, d, 0)
    load_flat_params(m, np.zeros(d + 1))
    X, y = torch.zeros(5, d), torch.zeros(5)  # every per-sample gradient is zero
    steps, sigma, C, lr, B = 400, 0.9, 0.3, 2.0, 16.0
    run_dp_sgd(m, X, y, "mse", steps=steps, sample_rate=1e-3, expected_batch_size=B, lr=lr, max_grad_norm=C,
               noise_multiplier=sigma, sample_gen=torch_generator(5), noise_gen=torch_generator(6))
    total = flatten_params(m)
    want = math.sqrt(steps) * lr * sigma * C / B
    assert abs(total.std() / want - 1) < 0.06  # 4000 draws: 6% is over 5 standard errors
    assert abs(total.mean()) < 5 * want / math.sqrt(total.size)


def test_poisson_schedule_includes_each_step_and_row_with_probability_q() -> None:
    gen = torch_generator(7)
    n, steps, q = 50, 400, 0.01
    counts = np.zeros((steps, n))
    for _ in range(40):
        sched = poisson_schedule(n, q, steps, gen)
        assert [t for t, _ in sched] == sorted({t for t, _ in sched})  # in order, each step once
        for t, idx in sched:
            assert idx.size > 0 and np.all(np.diff(idx) > 0) and 0 <= t < steps
            counts[t, idx] += 1
    draws = 40 * steps * n
    assert abs(counts.sum() - draws * q) < 6 * math.sqrt(draws * q)
    per_row = counts.sum(0)
    exp = 40 * steps * q
    chi2 = float((((per_row - exp) ** 2) / (exp * (1 - q))).sum())
    assert abs(chi2 - n) < 6 * math.sqrt(2 * n)


def test_training_randomness_is_a_keystream_seeded_from_the_os() -> None:
    from xdp_compute.training.randomness import TrainingRandomness

    a, b = TrainingRandomness.from_os(), TrainingRandomness.from_os()
    assert not np.array_equal(a.normal(8), b.normal(8))  # a fresh OS key each time
    s1, s2 = TrainingRandomness.seeded(1), TrainingRandomness.seeded(1)
    np.testing.assert_array_equal(s1.normal(1001), s2.normal(1001))  # tests only: reproducible
    u = TrainingRandomness.seeded(2).uniform(200_000)
    assert u.min() > 0.0 and u.max() <= 1.0 and abs(u.mean() - 0.5) < 6 * math.sqrt(1 / 12 / u.size)
    z = TrainingRandomness.seeded(3).normal(200_000)
    assert abs(z.mean()) < 6 / math.sqrt(z.size) and abs(z.std() - 1) < 0.01
    # 4th moment 3 (a Gaussian, not just any unit-variance law)
    assert abs(float((z**4).mean()) - 3.0) < 0.1
    with pytest.raises(ValueError):
        TrainingRandomness(b"short")
