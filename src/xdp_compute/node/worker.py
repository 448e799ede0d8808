"""Task work in its own process, apart from the node's gRPC session and heartbeat.

A node's tasks are CPU- and GIL-heavy (importing torch, DP-SGD, Paillier, CKKS). Run in the
agent's process they starved its heartbeat thread, so a busy node looked dead to the gateway
and lost its session (issue #9). The agent therefore keeps only I/O — register, heartbeat, long
poll, submit — and hands every task to one worker process that owns the ``TaskExecutor`` and its
job state (secure-aggregation sessions, training state between rounds). One process, not a pool:
a job's rounds must find the state its earlier rounds left.

If the worker dies (a crash in a native library, an out-of-memory kill), its pending tasks fail
with a clear error, the agent starts a fresh worker, and the node's session is untouched.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from xdp_compute.domain.manifest import Manifest
from xdp_compute.node.identity import NodeIdentity
from xdp_compute.node.outcome import TaskOutcome

log = logging.getLogger("xdp.node.worker")

# Modules a node needs for training; imported by the worker at start (when preloading) so the
# first round does not pay for torch and Opacus.
PRELOAD_MODULES = ("xdp_compute.training.local", "xdp_compute.node.tasks.train")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class WorkerOptions:
    """How the task worker runs: compute threads per task library, concurrent tasks, preloading, and
    the node's certified identity for secure aggregation (None: unauthenticated, plaintext loopback)."""

    threads: int = 1
    concurrency: int = 4
    preload: bool = True
    identity: NodeIdentity | None = None


#: The message id a worker sends, unasked, once its preloading is done (task ids start at 1).
READY = 0


class WorkerLost(Exception):
    """The task worker process ended while a task was pending."""


def usable_cpus() -> int:
    """The CPUs this process may actually use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's CPUs; a node in a container limited to 2 of 32 CPUs
    that sized torch's pools by it would run 32 threads on 2 CPUs (issue #13: three nodes on one
    2-core machine ran 5-9x slower than with one thread each).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.5)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """CPUs granted by the cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us / cfs_period_us``); None if unlimited."""
    import pathlib

    with contextlib.suppress(OSError, ValueError):  # no cgroup v2 file: try v1 below
        quota, period = pathlib.Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    try:
        q = int(pathlib.Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(pathlib.Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if q <= 0 or p <= 0 else q / p
    except (OSError, ValueError):
        return None


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps the native thread pools of numpy/torch at ``threads``."""
    return {k: str(threads) for k in _THREAD_VARS}


class TaskWorker:
    """Runs tasks in a child process (spawned, never forked: the agent holds gRPC threads)."""

    def __init__(self, manifest: Manifest, options: WorkerOptions | None = None) -> None:
        self.manifest, self.options = manifest, options or WorkerOptions()
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[TaskOutcome]] = {}
        self._ids = itertools.count(1)
        self._closing = False
        #: Set once the worker process has loaded what it preloads (at once without preloading).
        self.ready = threading.Event()
        self._conn: Connection | None = None
        self._proc: Any = None
        self.restarts = 0
        self._start()

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        self.ready.clear()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.manifest, self.options),
                                 name="xdp-task-worker", daemon=False)  # it may start helpers of its own
        proc.start()
        child.close()
        self._conn, self._proc = parent, proc
        threading.Thread(target=self._read_loop, args=(parent, proc), name="task-worker-reader",
                         daemon=True).start()

    def _read_loop(self, conn: Connection, proc: Any) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            ident, ok, header, blobs, error = msg
            if ident == READY:
                self.ready.set()
                continue
            with self._lock:
                fut = self._pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(TaskOutcome(ok=ok, header=header, blobs=blobs, error=error))
        proc.join(timeout=5)
        code = proc.exitcode
        with self._lock:
            lost, self._pending = self._pending, {}
            closing = self._closing
        for fut in lost.values():
            if not fut.done():
                fut.set_exception(WorkerLost(f"the node's task worker stopped (exit code {code})"))
        if closing:
            return
        log.error("task worker exited with code %s; starting a new one (job state held by it is lost)", code)
        self.restarts += 1
        time.sleep(min(0.5 * self.restarts, 5.0))  # do not spin if it keeps dying
        with self._lock:  # close() takes this lock too: it either sees the new worker or none starts
            if not self._closing:
                self._start()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            conn, proc = self._conn, self._proc
        if conn is not None:
            with contextlib.suppress(OSError, ValueError), self._send_lock:
                conn.send(None)
        if proc is not None:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=3)
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ calls
    def submit(self, node_id: str, kind: str, job_id: str, header: dict[str, Any],
               blobs: dict[str, bytes]) -> Future[TaskOutcome]:
        """Hand a task to the worker; the future resolves with its outcome (or WorkerLost)."""
        fut: Future[TaskOutcome] = Future()
        ident = next(self._ids)
        with self._lock:
            conn = self._conn
            self._pending[ident] = fut
        try:
            if conn is None:
                raise OSError("no task worker")
            with self._send_lock:
                conn.send((ident, node_id, kind, job_id, header, blobs))
        except (OSError, ValueError) as e:
            with self._lock:
                self._pending.pop(ident, None)
            fut.set_exception(WorkerLost(f"could not hand the task to the worker: {type(e).__name__}"))
        return fut

    def run(self, node_id: str, kind: str, job_id: str, header: dict[str, Any],
            blobs: dict[str, bytes]) -> TaskOutcome:
        """Run one task and wait for its outcome; a lost worker becomes a failed outcome."""
        try:
            return self.submit(node_id, kind, job_id, header, blobs).result()
        except WorkerLost as e:
            return TaskOutcome(ok=False, error=str(e))


# ---------------------------------------------------------------------- the child process
def _worker_main(conn: Connection, manifest: Manifest, options: WorkerOptions) -> None:
    import signal

    # Before numpy or torch is imported here (nothing before this line imports them): their
    # native thread pools read these once, at load.
    os.environ.update(thread_env(options.threads))
    # The agent owns shutdown: a signal to the node's process group stops the agent, which then
    # closes this worker; if the agent dies outright, the pipe's EOF ends the worker.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from xdp_compute.errors import XdpError
    from xdp_compute.node.executors import TaskExecutor

    executor = TaskExecutor(manifest, identity=options.identity)
    send_lock = threading.Lock()

    def signal_ready() -> None:
        with contextlib.suppress(OSError, ValueError), send_lock:
            conn.send((READY, True, {}, {}, None))

    spark = next((d.spark for d in manifest.datasets if d.spark is not None), None)
    if options.preload or spark is not None:
        def preload() -> None:
            if options.preload:
                _preload(options.threads)
            else:
                _limit_torch_threads_when_loaded(options.threads)
            if spark is not None:
                _start_spark(spark)
            signal_ready()

        threading.Thread(target=preload, name="preload", daemon=True).start()
    else:
        _limit_torch_threads_when_loaded(options.threads)
        signal_ready()
    pool = ThreadPoolExecutor(max_workers=max(options.concurrency, 1), thread_name_prefix="task")

    def run(ident: int, node_id: str, kind: str, job_id: str, header: dict[str, Any],
            blobs: dict[str, bytes]) -> None:
        try:
            executor.node_id = node_id
            out = executor.handle(kind, job_id, header, blobs)
        except XdpError as e:
            out = TaskOutcome(ok=False, error=e.detail)
        except BaseException as e:
            log.exception("task %s failed", kind)
            out = TaskOutcome(ok=False, error=f"{type(e).__name__} while running {kind}")
        try:
            with send_lock:
                try:
                    conn.send((ident, out.ok, out.header, out.blobs, out.error))
                except (TypeError, AttributeError, pickle.PicklingError):
                    conn.send((ident, False, {}, {}, f"the result of {kind} could not be sent"))
        except (OSError, ValueError):
            pass  # the agent is gone; nobody to tell

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if msg is None:
            break
        pool.submit(run, *msg)
    pool.shutdown(wait=False, cancel_futures=True)
    _stop_helpers(executor)
    os._exit(0)  # do not wait for daemon threads (preloading, stuck tasks)


def _stop_helpers(executor: Any) -> None:
    """End the worker's own helper processes (Paillier obfuscator pools) before it exits."""
    for child in mp.active_children():
        child.kill()  # first: a pool's shutdown would otherwise wait for work in progress
    with contextlib.suppress(Exception):
        executor.close()


def _preload(threads: int) -> None:
    import importlib

    started = time.time()
    for name in PRELOAD_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:  # the 'train' extra is optional on a node
            log.info("not preloading %s: %s", name, e)
            return
    _limit_torch_threads_when_loaded(threads)
    log.info("training libraries loaded in %.1fs", time.time() - started)


def _start_spark(options: Any) -> None:
    """Start the worker's one Spark session before the node registers (issue #18): its start takes
    seconds to tens of seconds, which the first query would otherwise wait for, past the gateway's
    round timeout on a busy machine. A session that cannot start is reported by that query."""
    from xdp_compute.errors import XdpError
    from xdp_compute.node.spark_source import spark_session

    started = time.time()
    try:
        spark_session(options)
    except XdpError as e:
        log.warning("Spark did not start: %s", e.detail)
        return
    log.info("Spark session started in %.1fs", time.time() - started)


def _limit_torch_threads_when_loaded(threads: int) -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
