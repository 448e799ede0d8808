"""Differential privacy core: exact integer noise, zCDP accounting, noise plans, error bars.

Pure functions and value types; no I/O. See each module's docstring for the papers cited.
"""

from xdp_compute.privacy.accountant import (
    Measurement,
    MeasurementNoise,
    NoisePlan,
    ddg_rho,
    ddg_tau,
    epsilon_delta_to_rho,
    plan_noise,
    rho_to_epsilon,
)
from xdp_compute.privacy.intervals import (
    Interval,
    NoisyCell,
    avg_interval,
    cell_interval,
    expected_avg_error,
    expected_error,
    noise_halfwidth,
    stddev_interval,
    variance_interval,
    z_score,
)
from xdp_compute.privacy.randomness import (
    RandomnessSource,
    SeededRandomness,
    SystemRandomness,
    default_randomness,
)
from xdp_compute.privacy.samplers import (
    sample_bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_gaussian_vector,
    sample_discrete_laplace,
    to_rational,
)

__all__ = [
    "Interval",
    "Measurement",
    "MeasurementNoise",
    "NoisePlan",
    "NoisyCell",
    "RandomnessSource",
    "SeededRandomness",
    "SystemRandomness",
    "avg_interval",
    "cell_interval",
    "ddg_rho",
    "ddg_tau",
    "default_randomness",
    "epsilon_delta_to_rho",
    "expected_avg_error",
    "expected_error",
    "noise_halfwidth",
    "plan_noise",
    "rho_to_epsilon",
    "sample_bernoulli_exp",
    "sample_discrete_gaussian",
    "sample_discrete_gaussian_vector",
    "sample_discrete_laplace",
    "stddev_interval",
    "to_rational",
    "variance_interval",
    "z_score",
]
