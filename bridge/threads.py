"""The number of worker threads JAX's CPU backend runs computations on.

JAX sizes that pool once, when its CPU backend starts, from the CPUs the starting thread
may run on (its affinity mask); no flag or config option sets it. `start_backend(n)`
narrows the calling thread's mask to `n` CPUs, starts the backend, and gives every
thread of the process its old mask back, so only the pool's size changes: all threads,
the pool's too, still run on every CPU they could before.

Why fewer: a DQN train step is a few dozen tiny kernels. Spread over several workers,
the hand-offs and the idle workers' spinning cost CPU time without shortening the step.
That matters for `bridge serve`, which shares the machine with the BEAM driving it: with
one CPU left to the BEAM, the Elixir-driven CartPole loop on 2 vCPUs trains ~20-30%
faster (README, "Benchmarks"). The in-process loop of `bridge train` gains nothing, so
it keeps JAX's default of one worker per CPU.
"""
from __future__ import annotations

import os

__all__ = ["available_cpus", "start_backend", "worker_threads"]

_POOL_THREAD_NAME = "XLAEigen"  # the pool's threads are named tf_XLAEigen


def available_cpus() -> int:
    """The CPUs this thread may run on (all of them where affinity is not supported)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def start_backend(threads: int | None) -> None:
    """Start JAX's CPU backend with `threads` worker threads (None, 0, or at least the
    available CPUs: JAX's default, one per CPU).

    Call it before anything uses JAX (it does nothing to a backend already started).
    Raises ValueError for a negative count.
    """
    if threads is not None and threads < 0:
        raise ValueError(f"XLA worker threads must be >= 0 (0: one per CPU), got {threads}")
    import jax

    if not threads or threads >= available_cpus() or not hasattr(os, "sched_setaffinity"):
        jax.devices("cpu")
        return
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(mask)[:threads])
    try:
        jax.devices("cpu")
    finally:
        # Threads started meanwhile (the pool, JAX's helpers) inherited the narrow mask.
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), mask)
            except OSError:  # a thread that has ended since the listing
                pass


def worker_threads() -> int:
    """How many worker threads the started CPU backend has (Linux; 0 elsewhere)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += _POOL_THREAD_NAME in f.read()
        except OSError:
            pass
    return count
