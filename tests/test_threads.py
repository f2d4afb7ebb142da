"""The worker threads of JAX's CPU backend: `bridge.threads`, `serve --xla-threads`,
`train --xla-threads`. Each case runs in a fresh process, since a backend starts once."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bridge.protocol import Atom
from conftest import ROOT, PortClient

CPUS = len(os.sched_getaffinity(0))

# Starts the backend with argv[1] threads, runs a computation, and reports the pool size
# and every thread's mask before and after.
_PROBE = """
import json, os, sys
from bridge.threads import available_cpus, start_backend, worker_threads

def masks():
    return sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})

before = masks()
start_backend(int(sys.argv[1]))
import jax.numpy as jnp
total = float((jnp.arange(4.0) * 2).sum())
print(json.dumps({"cpus": available_cpus(), "workers": worker_threads(), "before": before,
                  "after": masks(), "total": total}))
"""


def probe(threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(threads)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("threads", [1, 0, 64])
def test_start_backend_sizes_the_pool_and_leaves_every_thread_its_cpus(threads):
    seen = probe(threads)
    assert seen["cpus"] == CPUS
    assert seen["workers"] == (threads if 0 < threads < CPUS else CPUS)
    # The narrowing was only for the backend's start: every thread, the pool's included,
    # may run on all the CPUs the process had.
    assert seen["before"] == seen["after"] == [sorted(os.sched_getaffinity(0))]
    assert seen["total"] == 12.0


def test_start_backend_refuses_a_negative_count():
    from bridge.threads import start_backend

    with pytest.raises(ValueError, match=r"must be >= 0 \(0: one per CPU\), got -1"):
        start_backend(-1)


def server_workers(client: PortClient) -> int:
    """The XLA worker threads of the client's server process, once it answers calls."""
    assert client.call("ping", [Atom("up")]) == [Atom("up")]
    pid = client.proc.pid
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names.append(f.read())
    return sum("XLAEigen" in name for name in names)


@pytest.mark.integration
@pytest.mark.parametrize("args, expected", [
    ((), max(1, CPUS - 1)),  # one CPU left to the BEAM
    (("--xla-threads", "0"), CPUS),
    (("--xla-threads", "1"), 1),
])
def test_serve_leaves_a_cpu_to_the_beam_unless_told_otherwise(args, expected):
    with PortClient(args=list(args)) as client:
        assert server_workers(client) == expected
        agent = client.call("new_agent", {Atom("seed"): 0, Atom("learning_starts"): 32,
                                          Atom("batch_size"): 32})
        action = client.call("step", agent, [0.0, 0.1, 0.0, -0.1], 0.0, False, False)
        for _ in range(40):  # past learning_starts: training rounds run on the pool
            action = client.call("step", agent, [0.0, 0.1, 0.0, -0.1], 1.0, False, False)
        assert action in (0, 1)
        assert client.call("info", agent)[b"updates"] > 0


@pytest.mark.parametrize("command", [["serve"], ["train", "--steps", "10"]])
def test_a_negative_thread_count_is_refused_with_its_value(command):
    out = subprocess.run([sys.executable, "-m", "bridge", *command, "--xla-threads", "-3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "must be >= 0 (0: one per CPU), got -3" in out.stderr
