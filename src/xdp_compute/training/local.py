"""One node's share of a federated round: DP-SGD on its own rows, charged by its RDP accountant.

The node never sees other nodes' rows or updates; it receives the global flat parameters, trains
locally with DP-SGD (Abadi et al., CCS 2016, Algorithm 1) and returns ``new - global`` as a flat
float64 vector, which the lead fixed-point encodes and secure-aggregates.

Privacy (per node, for the whole job) — every parameter from PUBLIC inputs, never from the data
(issue #11: a plan from the node's real row count n made each charge an injective function of n):

1. **Plan once** (``plan_privacy``) from the spec, delta and the dataset's declared ``max_rows``
   N (manifest, public): sample rate ``q = batch_size / N`` (capped at 1), ``steps_per_round =
   local_epochs * ceil(1/q)``, planned steps ``rounds * steps_per_round``, and the noise
   multiplier from Opacus ``get_noise_multiplier(target_epsilon, delta, q, steps=planned,
   accountant="rdp")``. Poisson sampling at rate q gives the sampled-Gaussian RDP bound for *any*
   number of rows (Mironov, Talwar, Zhang 2019 bound the loss for one added or removed row
   whatever the others are), so the plan and its epsilon hold for n <= N and n > N alike; N
   only sets utility (each step samples about q*n rows) and the delta < 1/N sanity rule.
2. **Each step**: Poisson sampling (each row independently with probability q; see
   ``poisson_schedule``), per-sample gradients, per-sample clipping to ``max_grad_norm`` C,
   sum, Gaussian noise N(0, (sigma*C)^2 I) added to the sum, division by the *planned* expected
   batch size ``q * N`` (public, as Opacus's ``loss_reduction="mean"`` divides by the expected
   batch size). A step whose sample is empty still adds its noise. A run of k empty steps moves
   the model by the sum of k independent noise vectors whatever the model is, so it is applied
   as one draw of N(0, k (sigma*C)^2 I): the same distribution, at O(rows sampled) cost.
3. **Accounting**: the state's history is the Opacus ``RDPAccountant.history`` for the steps
   taken, ``[(sigma, q, total_steps)]`` as ``RDPAccountant.step`` would merge them; epsilon is
   ``RDPAccountant().get_epsilon(delta)`` over that history — a function of public inputs only.
4. **Budget check before any work**: a round's cost is ``eps(history + round) - eps(history)``;
   if it exceeds the node's ``epsilon_budget_left``, or the job would pass its
   ``target_epsilon`` / planned rounds, ``BudgetExhausted`` is raised and nothing runs.
5. **Randomness**: sampling and noise come from ``TrainingRandomness`` (ChaCha20 keystream keyed
   from ``os.urandom`` per round); see ``training/randomness.py`` for the float-Gaussian caveat.

Per-sample gradients: every zoo model is a stack of ``nn.Linear`` (+ ReLU), so the default
"linear" path gets them in closed form from one forward and one backward pass to the layer
outputs: for a linear layer with input a_i and output-gradient g_i, the per-sample weight
gradient is g_i a_i^T, whose Frobenius norm is ||g_i||·||a_i|| (Goodfellow 2015, "Efficient
per-example gradient computations", arXiv:1510.01799 — the same identity as Opacus's ghost
clipping, Li et al. 2022), and the clipped sum is (c ⊙ G)^T A — one matmul, no per-sample
materialisation. A generic ``torch.func`` vmap(grad) path is kept as the reference and for any
non-linear-stack module; tests check both agree with a per-row loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

from xdp_compute.errors import BudgetExhausted, InvalidSpec
from xdp_compute.training.randomness import TrainingRandomness
from xdp_compute.training.sampling import poisson_sample, poisson_schedule
from xdp_compute.training.spec import TrainingSpec, spec_from_any
from xdp_compute.training.zoo import (
    LOSS_BCE,
    LOSS_CE,
    LOSS_MSE,
    build_model,
    flatten_params,
    load_flat_params,
    loss_kind,
    n_params,
    per_sample_loss,
)

#: Opacus adds 1e-6 to the norm before dividing (``clip_factor = C / (norm + 1e-6)``); so do we.
_CLIP_EPS = 1e-6
#: Per-row evaluation loss is clipped to [0, EVAL_LOSS_BOUND] so ``loss_sum`` has sensitivity
#: EVAL_LOSS_BOUND (a log-loss of 10 means p(true class) ~ 4.5e-5).
EVAL_LOSS_BOUND = 10.0
PER_SAMPLE_METHODS = ("auto", "linear", "vmap")


# ---- privacy plan and accountant ---------------------------------------------------------------
@dataclass(frozen=True)
class PrivacyPlan:
    """What a node fixes at round 1 and keeps for the whole job."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int
    expected_batch_size: float
    delta: float
    planned_epsilon: float  # Opacus RDP epsilon after all planned steps (<= target_epsilon)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrivacyPlan:
        return cls(
            noise_multiplier=float(d["noise_multiplier"]),
            sample_rate=float(d["sample_rate"]),
            steps_per_round=int(d["steps_per_round"]),
            planned_steps=int(d["planned_steps"]),
            expected_batch_size=float(d["expected_batch_size"]),
            delta=float(d["delta"]),
            planned_epsilon=float(d["planned_epsilon"]),
        )


@dataclass(frozen=True)
class NodePrivacyState:
    """A node's accountant for one training job: its plan and Opacus-format history.

    ``history`` entries are ``(noise_multiplier, sample_rate, steps)`` exactly as
    ``opacus.accountants.RDPAccountant.history``. Persist with ``to_dict`` / ``from_dict``.
    """

    plan: PrivacyPlan | None = None
    history: tuple[tuple[float, float, int], ...] = ()
    rounds_done: int = 0

    @property
    def steps_taken(self) -> int:
        return sum(s for _, _, s in self.history)

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far (Opacus RDP accountant over ``history``); 0 before any step."""
        if not self.history:
            return 0.0
        d = delta if delta is not None else (self.plan.delta if self.plan else None)
        if d is None:
            raise ValueError("delta is needed to convert RDP to (epsilon, delta)")
        return epsilon_for_history(self.history, d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict() if self.plan else None,
            "history": [[float(s), float(q), int(n)] for s, q, n in self.history],
            "rounds_done": self.rounds_done,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodePrivacyState:
        plan = PrivacyPlan.from_dict(d["plan"]) if d.get("plan") else None
        hist = tuple((float(s), float(q), int(n)) for s, q, n in d.get("history", ()))
        return cls(plan=plan, history=hist, rounds_done=int(d.get("rounds_done", 0)))


@functools.lru_cache(maxsize=256)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus ``compute_rdp`` for one step at the accountant's default orders (cached)."""
    arr = np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
        ),
        dtype=np.float64,
    )
    arr.setflags(write=False)
    return arr


def count_noise_multiplier(plan: Any, target: float, delta: float) -> float:
    """Smallest Gaussian noise multiplier for the one release of a node's row count (its FedAvg
    weight, sample rate 1) so that the planned DP-SGD steps plus that release stay <= ``target``
    in the same RDP history. InvalidSpec if even a huge multiplier does not fit."""
    sgd = [(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)]
    lo, hi = 0.5, 1e5
    if epsilon_for_history([*sgd, (hi, 1.0, 1)], delta) > target:
        raise InvalidSpec("target_epsilon is too small for the planned steps", field="target_epsilon")
    for _ in range(60):  # bisection on a log scale; epsilon falls as the multiplier grows
        mid = math.sqrt(lo * hi)
        if epsilon_for_history([*sgd, (mid, 1.0, 1)], delta) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def epsilon_for_history(history: tuple[tuple[float, float, int], ...] | list[Any], delta: float) -> float:
    """``opacus.accountants.RDPAccountant().get_epsilon(delta)`` with the given history.

    Computed the way ``RDPAccountant.get_privacy_spent`` does — ``sum(compute_rdp(q, sigma,
    steps, DEFAULT_ALPHAS))`` then Opacus's ``get_privacy_spent`` (Balle et al. 2020, Thm 21) —
    but with the per-step RDP vector cached: Opacus's ``compute_rdp`` is ``rdp_1 * steps``, so
    ``rdp_1 * steps`` here gives the same floats (tests compare with ``RDPAccountant`` itself).
    The uncached accountant costs ~0.1 s per call for small sigma; a round asks twice.
    """
    if not history:
        return 0.0
    rdp = sum(_rdp_one_step(float(s), float(q)) * int(n) for s, q, n in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def _extend_history(
    history: tuple[tuple[float, float, int], ...], sigma: float, q: float, steps: int
) -> tuple[tuple[float, float, int], ...]:
    """History after ``steps`` more steps, merged as ``RDPAccountant.step`` merges them."""
    if steps <= 0:
        return history
    if history and history[-1][0] == sigma and history[-1][1] == q:
        return (*history[:-1], (sigma, q, history[-1][2] + steps))
    return (*history, (sigma, q, steps))


@functools.lru_cache(maxsize=64)
def _noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus ``get_noise_multiplier`` (RDP accountant), cached: a pure function of its inputs
    that takes ~1 s (a bisection over full accountant evaluations)."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
        )
    )


def plan_privacy(spec: TrainingSpec | Mapping[str, Any], max_rows: int, delta: float) -> PrivacyPlan:
    """Fix sample rate, steps and noise multiplier from public inputs only.

    ``max_rows`` is the dataset's declared (public) maximum row count on the node, never its real
    row count. Raises ``InvalidSpec`` if delta is not below 1/max_rows (a delta that large allows
    releasing a row outright) or the target epsilon is unreachable — both functions of the spec
    and the manifest, so the gateway refuses them at submission, before anything is reserved.
    """
    s = spec_from_any(spec)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InvalidSpec(f"max_rows must be a positive integer, got {max_rows!r}", field="max_rows")
    check_delta(delta, max_rows)
    q = min(1.0, s.batch_size / max_rows)
    steps_per_round = s.local_epochs * math.ceil(1.0 / q)
    planned = s.rounds * steps_per_round
    try:
        sigma = _noise_multiplier(float(s.target_epsilon), float(delta), q, planned)
    except ValueError as e:  # "The privacy budget is too low."
        raise InvalidSpec(
            f"target_epsilon {s.target_epsilon:g} cannot be reached: {e}", field="target_epsilon"
        ) from None
    planned_eps = epsilon_for_history(((sigma, q, planned),), delta)
    return PrivacyPlan(
        noise_multiplier=sigma,
        sample_rate=q,
        steps_per_round=steps_per_round,
        planned_steps=planned,
        expected_batch_size=q * max_rows,
        delta=delta,
        planned_epsilon=planned_eps,
    )


def check_delta(delta: float, max_rows: int) -> None:
    """``InvalidSpec`` unless 0 < delta < 1/max_rows (the dataset's declared maximum, public)."""
    if not 0 < delta < 1 / max_rows:
        raise InvalidSpec(
            f"delta {delta:g} must be below 1/max_rows = {1 / max_rows:.3g} (the dataset declares "
            f"max_rows = {max_rows})",
            field="delta",
        )


# ---- per-sample gradients and one DP-SGD pass ---------------------------------------------------
def _linear_stack(model: nn.Module) -> list[nn.Module] | None:
    """The layers if ``model`` is a Sequential of Linear / ReLU (the zoo's shape), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model)
    if not layers or not all(isinstance(m, nn.Linear | nn.ReLU) for m in layers):
        return None
    if any(isinstance(m, nn.Linear) and m.bias is None for m in layers):
        return None
    return layers


def clipped_grad_sum_linear(
    layers: list[nn.Module], xb: torch.Tensor, yb: torch.Tensor, kind: str, max_grad_norm: float
) -> list[torch.Tensor]:
    """Sum over the batch of per-sample gradients clipped to ``max_grad_norm`` (closed form).

    Returns one tensor per parameter in ``parameters()`` order. Goodfellow 2015: per-sample
    ||dL_i/dW||_F = ||g_i|| * ||a_i|| for a linear layer; the clipped sum is (c*G)^T A.
    """
    # Forward and backward by hand (no autograd graph: a step of a few rows costs ~10 tensor ops,
    # which matters when a loose max_rows makes most of the many steps one-row samples). Rows are
    # independent (no batch norm), so the gradient at row i's outputs is row i's own.
    with torch.no_grad():
        acts: list[torch.Tensor] = []       # the input of each Linear
        pre_relu: list[torch.Tensor] = []   # the input of each ReLU
        h = xb
        for m in layers:
            if isinstance(m, nn.Linear):
                acts.append(h)
                h = nn.functional.linear(h, m.weight, m.bias)
            else:
                pre_relu.append(h)
                h = torch.relu(h)
        # d per_sample_loss / d output (zoo.per_sample_loss): BCE-with-logits sigmoid(z) - y,
        # cross-entropy softmax(z) - onehot(y), half squared error z - y.
        if kind == LOSS_BCE:
            g = torch.sigmoid(h) - yb.to(h.dtype).reshape(-1, 1)
        elif kind == LOSS_CE:
            g = torch.softmax(h, dim=1)
            g[torch.arange(g.shape[0]), yb.long()] -= 1.0
        elif kind == LOSS_MSE:
            g = h - yb.to(h.dtype).reshape(-1, 1)
        else:
            raise ValueError(f"unknown loss kind {kind!r}")
        grads: list[torch.Tensor] = []      # gradient at each Linear's output, last layer first
        li, ri = len(acts), len(pre_relu)
        for m in reversed(layers):
            if isinstance(m, nn.Linear):
                li -= 1
                grads.append(g)
                if li > 0:
                    g = g @ m.weight
            else:
                ri -= 1
                g = g * (pre_relu[ri] > 0).to(g.dtype)
        grads.reverse()
    with torch.no_grad():
        sq = torch.zeros(xb.shape[0], dtype=xb.dtype)
        for a, g in zip(acts, grads, strict=True):
            sq += (g * g).sum(1) * ((a * a).sum(1) + 1.0)  # weight part + bias part
        # Opacus's clipping rule (opacus/optimizers/optimizer.py): min(1, C / (||g|| + 1e-6)).
        factor = (max_grad_norm / (sq.sqrt() + _CLIP_EPS)).clamp(max=1.0)
        out: list[torch.Tensor] = []
        for a, g in zip(acts, grads, strict=True):
            cg = g * factor[:, None]
            out.append(cg.T @ a)
            out.append(cg.sum(0))
    return out


def clipped_grad_sum_vmap(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, kind: str, max_grad_norm: float
) -> list[torch.Tensor]:
    """Same as ``clipped_grad_sum_linear`` for any module, via ``torch.func.vmap(grad)``."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def row_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        return per_sample_loss(out, y.unsqueeze(0), kind).sum()

    per = vmap(grad(row_loss), in_dims=(None, 0, 0))(params, xb, yb)
    with torch.no_grad():
        flat = [per[k].reshape(xb.shape[0], -1) for k in params]
        norms = torch.cat(flat, dim=1).norm(dim=1)
        factor = (max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
        return [torch.einsum("b,b...->...", factor, per[k]) for k in params]


def training_randomness(seed: int | None = None) -> TrainingRandomness:
    """The randomness for DP-SGD sampling and noise: a ChaCha20 stream keyed from ``os.urandom``,
    or — when a ``seed`` is given, for TESTS AND BENCHMARKS ONLY — a reproducible stream."""
    return TrainingRandomness.from_os() if seed is None else TrainingRandomness.seeded(seed)


#: Former name, kept for the benchmarks; it no longer returns a torch (Mersenne Twister) generator.
torch_generator = training_randomness


def run_dp_sgd(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    *,
    steps: int,
    sample_rate: float,
    expected_batch_size: float,
    lr: float,
    max_grad_norm: float,
    noise_multiplier: float,
    sample_gen: TrainingRandomness,
    noise_gen: TrainingRandomness,
    method: str = "auto",
) -> None:
    """Run ``steps`` DP-SGD steps on ``model`` in place (Abadi et al. 2016, Algorithm 1).

    Each step: Poisson-sample rows with probability ``sample_rate`` (``poisson_schedule``),
    clip per-sample gradients to ``max_grad_norm``, add N(0, (sigma*C)^2) to the sum, divide by
    ``expected_batch_size``, take an SGD step of size ``lr``. An empty sample still gets its
    noise (the mechanism must not reveal that the batch was empty); a run of k empty steps is
    one draw of k steps' summed noise (exactly that distribution; see the module docstring).
    """
    if method not in PER_SAMPLE_METHODS:
        raise ValueError(f"method must be one of {PER_SAMPLE_METHODS}")
    layers = _linear_stack(model)
    if method == "linear" and layers is None:
        raise ValueError("the 'linear' per-sample path needs a Sequential of Linear/ReLU layers")
    use_linear = layers is not None and method != "vmap"
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    std = noise_multiplier * max_grad_norm
    scale = lr / expected_batch_size

    def noisy_step(gsum: list[torch.Tensor] | None, noise_steps: int) -> None:
        # Noise of ``noise_steps`` steps summed: N(0, noise_steps * std^2) per coordinate.
        noise = None
        if std > 0 and noise_steps > 0:
            z = noise_gen.normal(total) * (std * math.sqrt(noise_steps))
            noise = torch.from_numpy(z).to(X.dtype)
        with torch.no_grad():
            off = 0
            for i, p in enumerate(params):
                k = p.numel()
                step = None if gsum is None else gsum[i]
                if noise is not None:
                    part = noise[off:off + k].view(p.shape)
                    step = part if step is None else step + part
                if step is not None:
                    p.sub_(step, alpha=scale)
                off += k

    # Step t moves the model by -scale * (g_t + z_t), g_t the clipped sum at the model after step
    # t-1. The noise z_t of a step and that of the empty steps after it are all applied before the
    # next gradient is evaluated, so they are drawn as one sum (one draw per non-empty step).
    schedule = poisson_schedule(X.shape[0], sample_rate, steps, sample_gen)
    first = schedule[0][0] if schedule else steps
    if first > 0:
        noisy_step(None, first)  # the empty steps before the first sampled one
    for j, (t, idx) in enumerate(schedule):
        rows = torch.from_numpy(idx)
        xb, yb = X[rows], y[rows]
        if use_linear:
            assert layers is not None
            gsum = clipped_grad_sum_linear(layers, xb, yb, kind, max_grad_norm)
        else:
            gsum = clipped_grad_sum_vmap(model, xb, yb, kind, max_grad_norm)
        nxt = schedule[j + 1][0] if j + 1 < len(schedule) else steps
        noisy_step(gsum, nxt - t)  # this step's noise and that of the empty steps up to the next one


# ---- the node's round --------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundResult:
    """What a node returns after a round. Only ``update`` (secure-aggregated) leaves the node;
    ``epsilon_round`` is what its ledger is charged now; ``state`` is persisted by the node.
    """

    update: np.ndarray  # new_params - global_params, float64
    steps: int  # DP-SGD steps taken this round
    epsilon: float  # cumulative epsilon of this job at this node (Opacus RDP)
    epsilon_round: float  # increment this round = epsilon - previous epsilon
    delta: float
    state: NodePrivacyState = field(repr=False)


@dataclass(frozen=True)
class EvalSums:
    """Raw held-out metrics as sums and counts, to be DP-noised by the caller before release.

    Sensitivity to adding/removing one row: ``count`` 1, ``correct`` 1, ``loss_sum``
    ``loss_bound`` (per-row loss is clipped to [0, loss_bound]), ``sq_err_sum`` 1 (regression:
    prediction clipped to [0, 1] against a label scaled to [0, 1]; multiply the mean by
    (hi - lo)^2 for label units). ``correct`` is None for regression, ``sq_err_sum`` None for
    classification. Do not release these un-noised.
    """

    count: int
    loss_sum: float
    loss_bound: float
    correct: int | None = None
    sq_err_sum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LocalTrainer:
    """Runs one node's DP-SGD rounds for one training job.

    ``max_rows`` is the dataset's declared (public) maximum row count on this node: the plan
    comes from it, never from the rows actually given to ``run_round`` (which may be any number,
    none included). ``default_delta`` is the dataset's declared delta, used when the spec has
    none. ``seed`` makes sampling and noise reproducible — **tests only**; leave it None in
    production so each round draws from a ChaCha20 stream keyed from ``os.urandom``.
    ``per_sample`` picks the per-sample-gradient path ("auto" = closed form for the zoo, "vmap" =
    torch.func).
    """

    def __init__(
        self,
        spec: TrainingSpec | Mapping[str, Any],
        n_features: int,
        n_classes: int,
        *,
        max_rows: int,
        default_delta: float | None = None,
        seed: int | None = None,
        per_sample: str = "auto",
    ) -> None:
        self.spec = spec_from_any(spec)
        self.spec.check_structure()
        if per_sample not in PER_SAMPLE_METHODS:
            raise ValueError(f"per_sample must be one of {PER_SAMPLE_METHODS}")
        self.n_features = n_features
        self.n_classes = n_classes
        self.kind = loss_kind(self.spec, n_classes)
        self.model = build_model(self.spec, n_features, n_classes)
        delta = self.spec.delta if self.spec.delta is not None else default_delta
        if delta is None:
            raise InvalidSpec("delta is required (neither the spec nor the dataset gives one)", field="delta")
        self.delta = float(delta)
        self.max_rows = max_rows
        self._seed = seed
        self.per_sample = per_sample
        self._plan: PrivacyPlan | None = None

    # -- privacy -------------------------------------------------------------------------------
    def plan(self) -> PrivacyPlan:
        """The job's plan from the spec, delta and declared ``max_rows`` (see ``plan_privacy``)."""
        if self._plan is None:
            self._plan = plan_privacy(self.spec, self.max_rows, self.delta)
        return self._plan

    def next_round(self, state: NodePrivacyState | None) -> tuple[PrivacyPlan, float, float]:
        """(plan, epsilon after the next round, cost of the next round) — without running it.

        A function of public inputs only (spec, delta, max_rows, rounds done). Raises
        ``BudgetExhausted`` if all planned rounds are done or the round would pass ``target_epsilon``.
        """
        st = state or NodePrivacyState()
        plan = st.plan or self.plan()
        if st.rounds_done >= self.spec.rounds:
            raise BudgetExhausted(
                f"all {self.spec.rounds} planned rounds are done; the privacy plan covers no more",
                epsilon_spent=st.epsilon(plan.delta),
            )
        before = epsilon_for_history(st.history, plan.delta) if st.history else 0.0
        hist = _extend_history(st.history, plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        after = epsilon_for_history(hist, plan.delta)
        if after > self.spec.target_epsilon + 1e-9:
            raise BudgetExhausted(
                f"the next round would bring epsilon to {after:.6g}, above target {self.spec.target_epsilon:g}",
                epsilon_spent=before,
            )
        return plan, after, after - before

    # -- training ------------------------------------------------------------------------------
    def _tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        Xa = np.asarray(X, dtype=np.float32)
        if Xa.ndim != 2 or Xa.shape[1] != self.n_features:
            raise InvalidSpec(f"X must have shape (n, {self.n_features}), got {Xa.shape}", field="features")
        if len(y) != Xa.shape[0]:
            raise InvalidSpec("X and y must have the same number of rows", field="label")
        if not np.all(np.isfinite(Xa)):
            raise InvalidSpec("X holds NaN or infinite values", field="features")
        yt = torch.as_tensor(np.asarray(y), dtype=torch.int64 if self.kind == LOSS_CE else torch.float32)
        return torch.from_numpy(np.ascontiguousarray(Xa)), yt

    def run_round(
        self,
        global_flat: np.ndarray,
        X: np.ndarray,
        y: np.ndarray,
        state: NodePrivacyState | None,
        epsilon_budget_left: float,
    ) -> RoundResult:
        """Train one round from ``global_flat`` on this node's (X, y); return the update.

        ``epsilon_budget_left`` is the epsilon this node's ledger can still pay (after what this
        job was already charged). The round's cost is computed *before* any work; if it exceeds
        the budget left — or the job's planned rounds / target epsilon — ``BudgetExhausted`` is
        raised and nothing is computed or changed.
        """
        Xt, yt = self._tensors(X, y)
        g = np.asarray(global_flat, dtype=np.float64).reshape(-1)
        if g.shape[0] != n_params(self.model) or not np.all(np.isfinite(g)):
            load_flat_params(self.model, g)  # raises InvalidSpec naming the problem; checked before any work
        st = state or NodePrivacyState()
        plan, eps_after, cost = self.next_round(st)
        if math.isnan(epsilon_budget_left) or cost > epsilon_budget_left:
            raise BudgetExhausted(
                f"this round costs epsilon {cost:.6g} but the node has {epsilon_budget_left:.6g} left",
                epsilon_needed=cost,
                epsilon_left=epsilon_budget_left,
            )
        load_flat_params(self.model, g)
        start = flatten_params(self.model)  # the global vector as float32 actually trained from
        # A fresh ChaCha20 key from the OS for each round's sampling and noise (seeded: tests only).
        seed = None if self._seed is None else self._seed * 1_000_003 + st.rounds_done
        run_dp_sgd(
            self.model,
            Xt,
            yt,
            self.kind,
            steps=plan.steps_per_round,
            sample_rate=plan.sample_rate,
            expected_batch_size=plan.expected_batch_size,
            lr=self.spec.lr,
            max_grad_norm=self.spec.max_grad_norm,
            noise_multiplier=plan.noise_multiplier,
            sample_gen=training_randomness(None if seed is None else 2 * seed),
            noise_gen=training_randomness(None if seed is None else 2 * seed + 1),
            method=self.per_sample,
        )
        new_state = replace(
            st,
            plan=plan,
            history=_extend_history(
                st.history, plan.noise_multiplier, plan.sample_rate, plan.steps_per_round
            ),
            rounds_done=st.rounds_done + 1,
        )
        return RoundResult(
            update=flatten_params(self.model) - start,
            steps=plan.steps_per_round,
            epsilon=eps_after,
            epsilon_round=cost,
            delta=plan.delta,
            state=new_state,
        )

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, flat: np.ndarray, X: np.ndarray, y: np.ndarray) -> EvalSums:
        """Held-out loss and accuracy (or squared error) as raw sums; noise them before release."""
        Xt, yt = self._tensors(X, y)
        load_flat_params(self.model, flat)
        return evaluate_sums(self.model, Xt, yt, self.kind)


def evaluate_sums(model: nn.Module, X: torch.Tensor, y: torch.Tensor, kind: str) -> EvalSums:
    """``EvalSums`` of ``model`` on (X, y) with per-row loss clipped for bounded sensitivity."""
    with torch.no_grad():
        out = model(X)
        if kind == LOSS_MSE:
            pred = out.squeeze(-1).clamp(0.0, 1.0)
            err = (pred - y.float()) ** 2
            loss = (0.5 * err).clamp(0.0, EVAL_LOSS_BOUND)
            return EvalSums(
                count=int(X.shape[0]),
                loss_sum=float(loss.sum()),
                loss_bound=EVAL_LOSS_BOUND,
                sq_err_sum=float(err.sum()),
            )
        loss = per_sample_loss(out, y, kind).clamp(0.0, EVAL_LOSS_BOUND)
        if kind == LOSS_BCE:
            correct = ((out.squeeze(-1) > 0).float() == y.float()).sum()
        else:
            correct = (out.argmax(-1) == y.long()).sum()
        return EvalSums(
            count=int(X.shape[0]),
            loss_sum=float(loss.sum()),
            loss_bound=EVAL_LOSS_BOUND,
            correct=int(correct),
        )


__all__ = [
    "EVAL_LOSS_BOUND",
    "EvalSums",
    "LocalTrainer",
    "NodePrivacyState",
    "PrivacyPlan",
    "RoundResult",
    "check_delta",
    "clipped_grad_sum_linear",
    "clipped_grad_sum_vmap",
    "count_noise_multiplier",
    "epsilon_for_history",
    "evaluate_sums",
    "plan_privacy",
    "poisson_sample",
    "poisson_schedule",
    "run_dp_sgd",
    "torch_generator",
    "training_randomness",
]
