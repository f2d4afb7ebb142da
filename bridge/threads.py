"""How many worker threads JAX's CPU backend runs computations on, and at what priority.

JAX sizes that pool once, when its CPU backend starts, from the CPUs the starting thread
may run on (its affinity mask); no flag or config option sets it. `start_backend(n)`
narrows the calling thread's mask to `n` CPUs, starts the backend, and gives every
thread of the process its old mask back, so only the pool's size changes: all threads,
the pool's too, still run on every CPU they could before.

Why fewer: a DQN train step is a few dozen tiny kernels. Spread over several workers,
the hand-offs and the idle workers' spinning cost CPU time without shortening the step.
That matters for `bridge serve`, which shares the machine with the BEAM driving it: with
one CPU left to the BEAM, the Elixir-driven CartPole loop on 2 vCPUs trains ~20-30%
faster (README, "Speed"). The in-process loop of `bridge train` gains nothing, so it
keeps JAX's default of one worker per CPU.

Both also run the workers at a lower priority (`nice`, default 5 steps below the thread
that starts the backend). A training round's computation has a whole env step to finish,
while the thread that answers the BEAM (or steps gymnasium) is on the critical path:
when both want the same CPU, the kernel now lets the latter run first. On 2 vCPUs,
alternated runs of the Elixir-driven loop gained 3-12% (within the VM's drift), and the
in-process loop about 2%.
"""
from __future__ import annotations

import os

__all__ = ["DEFAULT_NICE", "available_cpus", "check_cpu", "check_settings", "pin_main", "start_backend",
           "worker_threads"]

DEFAULT_NICE = 5

_POOL_THREAD_NAME = "XLAEigen"  # the pool's threads are named tf_XLAEigen


def available_cpus() -> int:
    """The CPUs this thread may run on (all of them where affinity is not supported)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_settings(threads: int | None, nice: int,
                   names: tuple[str, str] = ("XLA worker threads", "XLA worker nice")) -> None:
    """Raise ValueError, naming the value, for a negative worker count or a `nice`
    outside 0-19 (what `start_backend` accepts); `names` name the two in the message
    (the options they came from)."""
    if threads is not None and threads < 0:
        raise ValueError(f"{names[0]} must be >= 0 (0: one per CPU), got {threads}")
    if not 0 <= nice <= 19:
        raise ValueError(f"{names[1]} must be between 0 and 19, got {nice}")


def check_cpu(cpu: int, name: str = "CPU") -> None:
    """Raise ValueError, listing the allowed CPUs, for a CPU this process may not use
    (`name` names it in the message: the option it came from)."""
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        listed = ",".join(str(c) for c in sorted(allowed))
        raise ValueError(f"{name} {cpu} is not a CPU this process may use ({listed})")


def start_backend(threads: int | None, nice: int = DEFAULT_NICE) -> None:
    """Start JAX's CPU backend with `threads` worker threads (None, 0, or at least the
    available CPUs: JAX's default, one per CPU), running `nice` steps below the calling
    thread's priority (0: the same; the kernel caps a thread's nice value at 19).

    Call it before anything uses JAX (it does nothing to a backend already started).
    Raises ValueError for a negative count or a `nice` outside 0-19.
    """
    check_settings(threads, nice)
    import jax

    if not threads or threads >= available_cpus() or not hasattr(os, "sched_setaffinity"):
        jax.devices("cpu")
    else:
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, sorted(mask)[:threads])
        try:
            jax.devices("cpu")
        finally:
            # Threads started meanwhile (the pool, JAX's helpers) inherited the narrow mask.
            _set_affinity(_thread_ids(), mask)
    if nice:
        base = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's (Linux: per thread)
        for tid in _pool_thread_ids():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, base + nice))
            except OSError:  # a thread that has ended since the listing
                pass


def pin_main(cpu: int) -> None:
    """Give the calling thread CPU `cpu` to itself among ours: it runs there only, and the
    backend's worker threads move to the other CPUs this process may use.

    For `serve --main-cpu`: when the BEAM is kept off that CPU too (`mix dqn.train` does
    that on Linux), the thread that answers it is never preempted by a thread it has just
    woken, and its caches stay its own. Raises ValueError for a CPU outside the allowed set.
    """
    check_cpu(cpu)
    rest = os.sched_getaffinity(0) - {cpu}
    os.sched_setaffinity(0, {cpu})
    if rest:
        _set_affinity(_pool_thread_ids(), rest)


def _set_affinity(tids: list[int], cpus: set[int]) -> None:
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that has ended since the listing
            pass


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc
        return []


def _pool_thread_ids() -> list[int]:
    tids = []
    for tid in _thread_ids():
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if _POOL_THREAD_NAME in f.read():
                    tids.append(tid)
        except OSError:
            pass
    return tids


def worker_threads() -> list[tuple[int, int]]:
    """(thread id, nice value) of each worker thread of the started CPU backend (Linux;
    empty elsewhere)."""
    out = []
    for tid in _pool_thread_ids():
        try:
            out.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        except OSError:
            pass
    return out
