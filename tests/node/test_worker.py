"""The task worker sets its thread caps before numpy or torch can be loaded in it."""

from __future__ import annotations

import subprocess
import sys


def test_what_a_spawned_worker_imports_before_its_main_loads_no_numeric_library() -> None:
    # A spawned worker imports this module and unpickles its Manifest before ``_worker_main``
    # runs; if that pulled in numpy or torch, OMP_NUM_THREADS set there would come too late.
    code = ("import sys, xdp_compute.node.worker, xdp_compute.domain.manifest; "
            "print(sorted(m for m in ('numpy', 'torch', 'duckdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_thread_env_caps_every_native_pool() -> None:
    from xdp_compute.node.worker import thread_env

    env = thread_env(3)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
