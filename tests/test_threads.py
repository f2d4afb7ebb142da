"""The worker threads of JAX's CPU backend: `bridge.threads`, and the `--xla-threads` and
`--xla-nice` options of `serve` and `train`. Each case runs in a fresh process, since a
backend starts once."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bridge.protocol import Atom
from conftest import ROOT, PortClient

CPUS = len(os.sched_getaffinity(0))

# Starts the backend with argv[1] threads at nice argv[2], runs a computation, and reports
# the workers' nice values, this thread's, and every thread's mask before and after.
_PROBE = """
import json, os, sys
from bridge.threads import available_cpus, start_backend, worker_threads

def masks():
    return sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})

before = masks()
start_backend(int(sys.argv[1]), int(sys.argv[2]))
import jax.numpy as jnp
total = float((jnp.arange(4.0) * 2).sum())
print(json.dumps({"cpus": available_cpus(), "workers": [nice for _, nice in worker_threads()],
                  "main": os.getpriority(os.PRIO_PROCESS, 0), "before": before, "after": masks(),
                  "total": total}))
"""


def probe(threads: int, nice: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(threads), str(nice)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("threads, nice", [(1, 5), (0, 0), (64, 3)])
def test_start_backend_sizes_the_pool_lowers_its_priority_and_leaves_every_thread_its_cpus(threads, nice):
    seen = probe(threads, nice)
    assert seen["cpus"] == CPUS
    assert len(seen["workers"]) == (threads if 0 < threads < CPUS else CPUS)
    assert seen["workers"] == [seen["main"] + nice] * len(seen["workers"])
    # The narrowing was only for the backend's start: every thread, the pool's included,
    # may run on all the CPUs the process had.
    assert seen["before"] == seen["after"] == [sorted(os.sched_getaffinity(0))]
    assert seen["total"] == 12.0


def test_start_backend_refuses_a_negative_count_or_nice():
    from bridge.threads import start_backend

    with pytest.raises(ValueError, match=r"must be >= 0 \(0: one per CPU\), got -1"):
        start_backend(-1)
    with pytest.raises(ValueError, match=r"nice must be between 0 and 19, got 20"):
        start_backend(1, 20)


def server_workers(client: PortClient) -> list[int]:
    """The nice values of the XLA worker threads of the client's server process, less that
    of its main thread, once it answers calls."""
    assert client.call("ping", [Atom("up")]) == [Atom("up")]
    pid = client.proc.pid

    def nice(tid):  # field 19 of /proc/<pid>/task/<tid>/stat, after the ")" that ends comm
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    workers = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if "XLAEigen" in f.read():
                workers.append(nice(tid) - nice(pid))
    return workers


@pytest.mark.integration
@pytest.mark.parametrize("args, count, nice", [
    ((), max(1, CPUS - 1), 5),  # one CPU left to the BEAM
    (("--xla-threads", "0", "--xla-nice", "0"), CPUS, 0),
    (("--xla-threads", "1", "--xla-nice", "12"), 1, 12),
])
def test_serve_leaves_a_cpu_to_the_beam_unless_told_otherwise(args, count, nice):
    with PortClient(args=list(args)) as client:
        assert server_workers(client) == [nice] * count
        agent = client.call("new_agent", {Atom("seed"): 0, Atom("learning_starts"): 32,
                                          Atom("batch_size"): 32})
        action = client.call("step", agent, [0.0, 0.1, 0.0, -0.1], 0.0, False, False)
        for _ in range(40):  # past learning_starts: training rounds run on the pool
            action = client.call("step", agent, [0.0, 0.1, 0.0, -0.1], 1.0, False, False)
        assert action in (0, 1)
        assert client.call("info", agent)[b"updates"] > 0


@pytest.mark.parametrize("command", [["serve"], ["train", "--steps", "10"]])
@pytest.mark.parametrize("option, message", [
    (["--xla-threads", "-3"], "must be >= 0 (0: one per CPU), got -3"),
    (["--xla-nice", "25"], "must be between 0 and 19, got 25"),
])
def test_a_bad_thread_option_is_refused_with_its_value(command, option, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bridge", *command, *option,
                          *(["--runs-dir", str(tmp_path)] if command[0] == "train" else [])],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert not list(tmp_path.iterdir())  # train wrote nothing


# Trains 800 fused steps on random CartPole-shaped data with argv[1] workers at nice
# argv[2]; prints a digest of the params and the actions taken.
_LEARN = """
import hashlib, sys
import numpy as np
from bridge.threads import start_backend
start_backend(int(sys.argv[1]), int(sys.argv[2]))
from bridge.agent import Agent
from bridge.config import DQNConfig
agent = Agent(DQNConfig(seed=3, learning_starts=100, batch_size=64))
rng = np.random.default_rng(0)
actions = [agent.step(rng.standard_normal(4).astype(np.float32))]
for i in range(800):
    done = i % 50 == 49
    actions.append(agent.step(rng.standard_normal(4).astype(np.float32), 1.0, done, False))
digest = hashlib.sha256(np.asarray(agent.flat_params).tobytes() + bytes(actions)).hexdigest()
print(agent.updates, digest)
"""


def test_the_pool_size_and_priority_do_not_change_what_an_agent_learns():
    runs = {subprocess.run([sys.executable, "-c", _LEARN, threads, nice], capture_output=True, text=True,
                           cwd=ROOT, timeout=300, check=True).stdout
            for threads, nice in (("1", "5"), ("0", "0"))}
    assert len(runs) == 1, runs
    updates = int(runs.pop().split()[0])
    assert updates == 701  # one per stored transition from the 100th on


def _allowed_from_status(pid: int, tid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                cpus = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    a, _, b = part.partition("-")
                    cpus.update(range(int(a), int(b or a) + 1))
                return cpus
    raise AssertionError("no Cpus_allowed_list")


@pytest.mark.integration
@pytest.mark.skipif(CPUS < 2, reason="needs two CPUs to give one away")
def test_main_cpu_gives_the_answering_thread_a_cpu_of_its_own():
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1]
    with PortClient(args=["--main-cpu", str(cpu)]) as client:
        assert client.call("ping", [Atom("up")]) == [Atom("up")]
        pid = client.proc.pid
        assert _allowed_from_status(pid, pid) == {cpu}
        workers = [int(t) for t in os.listdir(f"/proc/{pid}/task")
                   if "XLAEigen" in open(f"/proc/{pid}/task/{t}/comm").read()]
        assert workers and all(_allowed_from_status(pid, t) == set(allowed) - {cpu} for t in workers)
        agent = client.call("new_agent", {Atom("seed"): 0, Atom("learning_starts"): 32, Atom("batch_size"): 32})
        client.call("step", agent, [0.0, 0.1, 0.0, -0.1], 0.0, False, False)
        for _ in range(40):
            client.call("step", agent, [0.0, 0.1, 0.0, -0.1], 1.0, False, False)
        assert client.call("info", agent)[b"updates"] > 0


def test_main_cpu_outside_the_allowed_set_is_refused_with_the_set():
    out = subprocess.run([sys.executable, "-m", "bridge", "serve", "--main-cpu", "4096"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    allowed = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    assert f"--main-cpu 4096 is not a CPU this process may use ({allowed})" in out.stderr
