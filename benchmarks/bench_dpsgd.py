"""One epoch of training an MLP (30 -> 64 -> 64 -> 2): non-private SGD vs our DP-SGD vs Opacus.

Run from the project root:

    .venv/bin/python benchmarks/bench_dpsgd.py [--rows 50000] [--batch 256] [--repeats 3] [--threads 1]

Measured in the same run, same data, same number of steps (one epoch = ceil(rows / batch)):

- ``nonprivate``   plain SGD over contiguous tensor slices (the baseline);
- ``xdp_linear``   ``xdp_compute.training.local.run_dp_sgd`` with the closed-form per-sample
                   gradients of the zoo's Linear/ReLU stack (the default path);
- ``xdp_vmap``     the same with ``torch.func`` vmap(grad) per-sample gradients;
- ``opacus_hooks`` Opacus ``PrivacyEngine.make_private`` (default hooks, Poisson DataLoader).

Prints median seconds per epoch and the ratio to the non-private baseline (goal: DP-SGD <= 2x),
then ``RESULT <json>``. Timings on a shared 2-core machine are noisy; ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from xdp_compute.training.local import run_dp_sgd, torch_generator
from xdp_compute.training.spec import TrainingSpec
from xdp_compute.training.zoo import build_model, init_params, load_flat_params

D_IN, HIDDEN, N_CLASSES = 30, [64, 64], 2


def make_data(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(rows, D_IN)).astype(np.float32)
    w = rng.normal(size=D_IN)
    y = ((X - 0.5) @ w + rng.normal(0, 0.5, rows) > 0).astype(np.int64)
    return torch.from_numpy(X), torch.from_numpy(y)


def fresh_model(spec: TrainingSpec, flat: np.ndarray) -> nn.Sequential:
    m = build_model(spec, D_IN, N_CLASSES)
    load_flat_params(m, flat)
    return m


def bench(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up (allocator, vmap tracing, Opacus hooks)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    X, y = make_data(args.rows)
    spec = TrainingSpec(
        dataset="bench",
        model="mlp",
        features=tuple(f"x{i}" for i in range(D_IN)),
        label="y",
        hidden=tuple(HIDDEN),
        batch_size=args.batch,
        lr=0.5,
        max_grad_norm=1.0,
    )
    flat0 = init_params(spec, D_IN, N_CLASSES, seed=0)
    q = args.batch / args.rows
    steps = math.ceil(1 / q)
    lr, C, sigma = 0.5, 1.0, 1.0

    def nonprivate() -> None:
        m = fresh_model(spec, flat0)
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        for s in range(steps):
            xb, yb = X[s * args.batch : (s + 1) * args.batch], y[s * args.batch : (s + 1) * args.batch]
            if xb.shape[0] == 0:
                continue
            opt.zero_grad(set_to_none=True)
            loss_fn(m(xb), yb).backward()
            opt.step()

    def xdp(method: str) -> Callable[[], None]:
        def run() -> None:
            m = fresh_model(spec, flat0)
            run_dp_sgd(
                m,
                X,
                y,
                "ce",
                steps=steps,
                sample_rate=q,
                expected_batch_size=q * args.rows,
                lr=lr,
                max_grad_norm=C,
                noise_multiplier=sigma,
                sample_gen=torch_generator(1),
                noise_gen=torch_generator(2),
                method=method,
            )

        return run

    def opacus_hooks() -> None:
        from opacus import PrivacyEngine

        m = fresh_model(spec, flat0)
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=args.batch)
        engine = PrivacyEngine(accountant="rdp")
        m2, opt2, loader2 = engine.make_private(
            module=m,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=C,
            poisson_sampling=True,
        )
        loss_fn = nn.CrossEntropyLoss()
        for xb, yb in loader2:
            opt2.zero_grad(set_to_none=True)
            if xb.shape[0] == 0:
                opt2.step()
                continue
            loss_fn(m2(xb), yb).backward()
            opt2.step()

    results: dict[str, float] = {}
    for name, fn in [
        ("nonprivate", nonprivate),
        ("xdp_linear", xdp("linear")),
        ("xdp_vmap", xdp("vmap")),
        ("opacus_hooks", opacus_hooks),
    ]:
        results[name] = bench(fn, args.repeats)

    base = results["nonprivate"]
    n_par = sum((a + 1) * b for a, b in zip([D_IN, *HIDDEN], [*HIDDEN, N_CLASSES], strict=True))
    print(
        f"MLP {D_IN}->{'->'.join(map(str, HIDDEN))}->{N_CLASSES} ({n_par} params), {args.rows} rows, "
        f"batch {args.batch} (q={q:.5f}), {steps} steps/epoch, torch threads {args.threads}, "
        f"median of {args.repeats}"
    )
    print(f"{'method':<14}{'s/epoch':>10}{'x nonprivate':>14}")
    for name, t in results.items():
        print(f"{name:<14}{t:>10.3f}{t / base:>14.2f}")
    out = {
        "rows": args.rows,
        "batch": args.batch,
        "steps": steps,
        "threads": args.threads,
        "params": n_par,
        "seconds": {k: round(v, 4) for k, v in results.items()},
        "ratio_vs_nonprivate": {k: round(v / base, 3) for k, v in results.items()},
        "goal_dp_le_2x": results["xdp_linear"] / base <= 2.0,
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
