"""`python -m bridge bench protocol|fuzz|soak`: the wire, measured from a Python client.

protocol  median and p99 round trip of `ping` and `select_action` through the server,
          beside the same client's raw pipe echo (a child that copies frames back without
          decoding them) and the in-process act time, with their ratios. In process
          is `Agent.act`, and `Agent.act_values` (what the server's select_action lane
          runs); the target ratio takes the cheaper of the two.
fuzz      random and mutated well-framed terms at the server: it must answer every frame
          and its RSS must stay flat.
soak      1,000,000 (--calls) select_action calls: RSS growth of the server after warm-up.

Each writes bench/results/<kind>-<YYYY-MM-DD>.json and prints a small table.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import math
import os
import random
import select
import statistics
import struct
import subprocess
import sys
import time

from bridge.protocol import Atom, decode, encode, frame

__all__ = ["add_arguments", "main", "PipeServer", "spawn_on_fds_3_4", "random_term", "mutate", "fuzz_cases",
           "open_fuzz_target", "run_fuzz"]

_OBS = [0.01, -0.02, 0.03, 0.04]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("protocol / fuzz / soak")
    g.add_argument("--calls", type=int, default=None,
                   help="protocol: round trips per measurement (default 5000); "
                        "soak: select_action calls (default 1000000)")
    g.add_argument("--cases", type=int, default=100_000,
                   help="fuzz: frames to send (default 100000)")
    g.add_argument("--fuzz-seed", type=int, default=0, help="fuzz: random seed (default 0)")
    g.add_argument("--cpu", type=int, default=None, metavar="N",
                   help="protocol: pin the client and the servers to CPU N (default: not pinned). On a "
                        "small VM a round trip between two CPUs costs an idle CPU's wake-up, which "
                        "varies run to run; on one CPU the numbers are stable")
    g.add_argument("--out-dir", default="bench/results",
                   help="protocol/fuzz/soak: folder for the JSON result (default bench/results)")


_TRAMPOLINE = ("import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); os.dup2(a, 3); "
               "os.dup2(b, 4); os.close(a); os.close(b); os.execvp(sys.argv[3], sys.argv[3:])")


def spawn_on_fds_3_4(argv: list[str], **popen_kwargs) -> tuple[subprocess.Popen, int, int]:
    """Start `argv` with a pipe on its fd 3 (it reads) and one on its fd 4 (it writes), the
    way a BEAM port opened with :nouse_stdio does. Returns (process, write fd, read fd).

    A small trampoline process places the descriptors and execs `argv` (keeping its pid),
    so no Python code runs between fork and exec here, which would be unsafe in a process
    that runs JAX's threads.
    """
    child_in, parent_out = os.pipe()
    parent_in, child_out = os.pipe()
    high_in = fcntl.fcntl(child_in, fcntl.F_DUPFD_CLOEXEC, 10)
    high_out = fcntl.fcntl(child_out, fcntl.F_DUPFD_CLOEXEC, 10)
    for fd in (child_in, child_out):
        os.close(fd)
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _TRAMPOLINE, str(high_in),
                                 str(high_out), *argv],
                                pass_fds=(high_in, high_out), **popen_kwargs)
    finally:
        os.close(high_in)
        os.close(high_out)
    return proc, parent_out, parent_in


class PipeServer:
    """A child process speaking packet-4 frames on its fds 3/4, as a BEAM port sees it."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc, self.out_fd, self.in_fd = spawn_on_fds_3_4(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        self._buffer = bytearray()
        self._ids = 0

    @classmethod
    def bridge(cls, *args: str) -> "PipeServer":
        return cls([sys.executable, "-m", "bridge", "serve", *args])

    def send(self, payload: bytes) -> None:
        data = frame(payload)
        written = os.write(self.out_fd, data)
        while written < len(data):
            written += os.write(self.out_fd, data[written:])

    def recv(self, timeout: float | None = None) -> bytes:
        while True:
            if len(self._buffer) >= 4:
                (n,) = struct.unpack_from(">I", self._buffer)
                if len(self._buffer) >= 4 + n:
                    payload = bytes(self._buffer[4:4 + n])
                    del self._buffer[:4 + n]
                    return payload
            if timeout is not None and not select.select([self.in_fd], [], [], timeout)[0]:
                raise TimeoutError(f"no reply within {timeout} s")
            chunk = os.read(self.in_fd, 1 << 16)
            if not chunk:
                raise EOFError(f"server exited with status {self.proc.wait()}")
            self._buffer += chunk

    def call(self, function: str, *args):
        self._ids += 1
        self.send(encode((Atom("C"), self._ids, Atom("bridge.api"), Atom(function), list(args))))
        tag, _, value = decode(self.recv(timeout=120))
        if tag != "r":
            raise RuntimeError(f"{function} failed: {value}")
        return value

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def close(self) -> int:
        os.close(self.out_fd)
        try:
            status = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        os.close(self.in_fd)
        return status


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _write(kind: str, args, result: dict) -> str:
    from bridge.cli import results_path

    path = results_path(kind, getattr(args, "out_dir", None) or "bench/results")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return path


def _stats(samples_s: list[float]) -> dict:
    us = sorted(s * 1e6 for s in samples_s)
    return {"median_us": round(statistics.median(us), 2),
            "p99_us": round(us[min(len(us) - 1, int(0.99 * len(us)))], 2),
            "n": len(us)}


def _interleaved(targets: list[tuple[PipeServer, bytes]], warmup: int, n: int) -> list[list[float]]:
    """Round-trip times (s) of each (server, payload), measured in turns, after warm-up."""
    clock, samples = time.perf_counter, [[] for _ in targets]
    for i in range(warmup + n):
        for (server, payload), times in zip(targets, samples):
            t0 = clock()
            server.send(payload)
            server.recv()
            if i >= warmup:
                times.append(clock() - t0)
    return samples


def _timed_calls(function, arg, warmup: int, n: int) -> list[float]:
    """Times (s) of n calls `function(arg)` in process, after warm-up."""
    clock, samples = time.perf_counter, []
    for _ in range(warmup + n):
        t0 = clock()
        function(arg)
        samples.append(clock() - t0)
    return samples[warmup:]


def _call_payload(function: str, args: list) -> bytes:
    return encode((Atom("C"), 1, Atom("bridge.api"), Atom(function), args))


# ------------------------------------------------------------------------- protocol

def bench_protocol(calls: int) -> dict:
    warmup = max(200, calls // 10)
    # Both children are started before this process imports JAX: forking a process that
    # runs JAX's threads is unsafe.
    echo = PipeServer([sys.executable, "-m", "bridge.echo"])
    server = PipeServer.bridge()
    ping_payload = _call_payload("ping", [_OBS])
    config = {"seed": 0, "eps_start": 0.0, "eps_end": 0.0}  # every action goes through the net
    handle = server.call("new_agent", config)
    act_payload = _call_payload("select_action", [handle, _OBS])
    # The three take turns, call after call: a slow spell of the machine lands on all alike.
    echo_samples, ping_samples, act_samples = _interleaved(
        [(echo, ping_payload), (server, ping_payload), (server, act_payload)], warmup, calls)
    server.close()

    import numpy as np

    from bridge.agent import Agent
    from bridge.config import DQNConfig

    agent = Agent(DQNConfig.from_mapping(config))
    obs = np.asarray(_OBS, dtype=np.float32)
    clock = time.perf_counter
    local = _timed_calls(agent.act, obs, warmup, calls)
    # What the server's select_action lane runs: the same forward pass, with the checks
    # on the observation done in Python instead of numpy (~1 µs less).
    lane = _timed_calls(agent.act_values, tuple(_OBS), warmup, calls)

    # The server's act runs right after a blocking pipe read, not in a hot loop; timing the
    # in-process act right after a raw echo round trip shows what that cadence alone costs.
    cadenced = []
    for _ in range(warmup + calls):
        echo.send(ping_payload)
        echo.recv()
        t0 = clock()
        agent.act(obs)
        cadenced.append(clock() - t0)
    echo.close()

    rows = {"raw_echo": _stats(echo_samples), "ping": _stats(ping_samples),
            "select_action": _stats(act_samples), "in_process_act": _stats(local),
            "in_process_act_values": _stats(lane),
            "in_process_act_after_echo": _stats(cadenced[warmup:])}
    med = {k: v["median_us"] for k, v in rows.items()}
    p99 = {k: v["p99_us"] for k, v in rows.items()}
    # The target's "in-process act" is the cheaper of the two ways to act in process.
    act_med = min(med["in_process_act"], med["in_process_act_values"])
    act_p99 = min(p99["in_process_act"], p99["in_process_act_values"])
    ratios = {
        "ping / raw_echo (median)": med["ping"] / med["raw_echo"],
        "select_action / (raw_echo + act) (median)": med["select_action"] / (med["raw_echo"] + act_med),
        "select_action / (raw_echo + act) (p99)": p99["select_action"] / (p99["raw_echo"] + act_p99),
        "select_action / (ping + act) (median)": med["select_action"] / (med["ping"] + act_med),
        "select_action / (raw_echo + act after echo) (median)":
            med["select_action"] / (med["raw_echo"] + med["in_process_act_after_echo"]),
    }
    return {"kind": "protocol", "date": datetime.date.today().isoformat(), "calls": calls,
            "timings": rows, "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "target": "select_action / (raw_echo + act) (median) <= 1.25",
            "meets_target": ratios["select_action / (raw_echo + act) (median)"] <= 1.25}


def _print_protocol(result: dict) -> None:
    print(f"{'round trip':<28}{'median us':>12}{'p99 us':>12}")
    for name, row in result["timings"].items():
        print(f"{name:<28}{row['median_us']:>12.1f}{row['p99_us']:>12.1f}")
    for name, value in result["ratios"].items():
        print(f"{name:<56}{value:>8.3f}")


# ----------------------------------------------------------------------------- fuzz

def random_term(rng: random.Random, depth: int = 0):
    """A random Python value in the codec's mapping (atoms, numbers, text, containers)."""
    kinds = ["int", "bigint", "float", "atom", "binary", "str", "bool", "nil"]
    if depth < 4:
        kinds += ["list", "tuple", "map", "charlist"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-2**31, 2**31)
    if kind == "bigint":
        return rng.choice([-1, 1]) * rng.getrandbits(rng.randint(32, 600))
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), math.nan, math.inf, -math.inf, 0.0])
    if kind == "atom":
        return Atom("".join(rng.choice("abcxyz_é∂") for _ in range(rng.randint(0, 12))))
    if kind == "binary":
        return rng.randbytes(rng.randint(0, 40))
    if kind == "str":
        return "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 10)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "nil":
        return None
    if kind == "charlist":
        return [rng.randint(0, 255) for _ in range(rng.randint(1, 20))]
    n = rng.randint(0, 6)
    items = [random_term(rng, depth + 1) for _ in range(n)]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return {Atom(f"k{i}"): v for i, v in enumerate(items)}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Flip, insert, delete or truncate bytes of an encoded term."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.6:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif op < 0.8 and data:
            del data[rng.randrange(len(data))]
        elif data:
            del data[rng.randrange(len(data)):]
    return bytes(data)


_FUNCTIONS = ["ping", "select_action", "observe", "step", "info", "env_step", "close",
              "optimize", "no_such_function", "env_spec"]


def fuzz_cases(seed: int):
    """Endless frames: well-formed calls with random arguments, random terms, and
    mutations of both."""
    rng = random.Random(seed)
    while True:
        r = rng.random()
        function = rng.choice(_FUNCTIONS)
        module = "bridge.api" if rng.random() < 0.9 else rng.choice(["os", "builtins", "bridge"])
        args = [random_term(rng) for _ in range(rng.randint(0, 4))]
        if args and rng.random() < 0.4:  # reach past the handle check into the agent and env
            args[0] = rng.choice([(b"agent", 1), (b"env", 2)])
            if len(args) > 1 and rng.random() < 0.5:
                args[1] = [rng.uniform(-1, 1) for _ in range(rng.choice([4, 4, 3]))]
        call = encode((Atom("C"), rng.randint(0, 2**40), Atom(module), Atom(function), args))
        if r < 0.4:
            yield call
        elif r < 0.5:
            yield encode(random_term(rng))
        else:
            yield mutate(rng, call)


def run_fuzz(server: PipeServer, cases: int, seed: int, time_limit: float | None = None) -> dict:
    """Send `cases` fuzz frames (stopping early at `time_limit` seconds); every frame must
    be answered. Returns counts and the server's RSS after warm-up and at the end."""
    start = time.monotonic()
    counts = {"results": 0, "errors": 0}
    rss_start = None
    warmup = min(2000, cases // 10)
    sent = 0
    for payload in fuzz_cases(seed):
        if sent >= cases or (time_limit is not None and time.monotonic() - start > time_limit):
            break
        server.send(payload)
        reply = decode(server.recv(timeout=30))
        if not (type(reply) is tuple and len(reply) == 3 and reply[0] in ("r", "e")):
            raise AssertionError(f"case {sent}: reply is not {{:r|:e, id, value}}: {reply!r:.200}")
        counts["results" if reply[0] == "r" else "errors"] += 1
        sent += 1
        if sent == warmup:
            rss_start = server.rss_kib()
    if server.proc.poll() is not None:
        raise AssertionError(f"server exited with status {server.proc.returncode}")
    rss_end = server.rss_kib()
    assert server.call("ping", "still alive") == b"still alive"
    return {"cases": sent, **counts, "seconds": round(time.monotonic() - start, 2),
            "rss_after_warmup_kib": rss_start or rss_end, "rss_end_kib": rss_end,
            "rss_growth": round(rss_end / (rss_start or rss_end) - 1, 4)}


def open_fuzz_target() -> PipeServer:
    """A server holding the handles fuzz_cases aims at: ("agent", 1) and ("env", 2)."""
    server = PipeServer.bridge()
    assert server.call("new_agent", {"seed": 0, "hidden_sizes": [16]}) == (b"agent", 1)
    assert server.call("env_make", "CartPole-v1") == (b"env", 2)
    server.call("env_reset", (b"env", 2), 0)
    return server


def bench_fuzz(cases: int, seed: int) -> dict:
    server = open_fuzz_target()
    try:
        result = run_fuzz(server, cases, seed)
    finally:
        server.close()
    return {"kind": "fuzz", "date": datetime.date.today().isoformat(), "seed": seed, **result,
            "rss_flat": result["rss_growth"] < 0.05}


# ----------------------------------------------------------------------------- soak

def bench_soak(calls: int) -> dict:
    server = PipeServer.bridge()
    handle = server.call("new_agent", {"seed": 0, "eps_start": 0.0, "eps_end": 0.0})
    payload = _call_payload("select_action", [handle, _OBS])
    send, recv = server.send, server.recv
    warmup = min(20_000, max(1, calls // 10))
    start = time.monotonic()
    samples = []
    rss_warm = None
    for i in range(calls):
        send(payload)
        reply = recv()
        if reply[1:6] != b"h\x03w\x01r":  # {:r, _, _} without decoding the whole reply
            raise AssertionError(f"call {i} failed: {decode(reply)!r:.300}")
        if i + 1 == warmup:
            rss_warm = server.rss_kib()
        if (i + 1) % max(1, calls // 20) == 0:
            samples.append({"calls": i + 1, "rss_kib": server.rss_kib()})
    seconds = time.monotonic() - start
    rss_end = server.rss_kib()
    server.close()
    growth = rss_end / rss_warm - 1
    return {"kind": "soak", "date": datetime.date.today().isoformat(), "calls": calls,
            "seconds": round(seconds, 1), "calls_per_second": round(calls / seconds),
            "rss_after_warmup_kib": rss_warm, "rss_end_kib": rss_end,
            "rss_growth": round(growth, 4), "limit": 0.05, "passed": growth < 0.05,
            "rss_samples": samples}


def main(kind: str, args: argparse.Namespace) -> int:
    if kind == "protocol":
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})  # the children inherit it
        result = bench_protocol(args.calls or 5000)
        result["pinned_cpu"] = args.cpu
        path = _write(kind, args, result)
        _print_protocol(result)
    elif kind == "fuzz":
        result = bench_fuzz(args.cases, args.fuzz_seed)
        path = _write(kind, args, result)
        print(f"{result['cases']} cases in {result['seconds']} s: {result['results']} results, "
              f"{result['errors']} error replies; server RSS {result['rss_after_warmup_kib']} -> "
              f"{result['rss_end_kib']} KiB ({result['rss_growth']:+.2%})")
    elif kind == "soak":
        result = bench_soak(args.calls or 1_000_000)
        path = _write(kind, args, result)
        print(f"{result['calls']} select_action calls in {result['seconds']} s "
              f"({result['calls_per_second']}/s); server RSS {result['rss_after_warmup_kib']} -> "
              f"{result['rss_end_kib']} KiB ({result['rss_growth']:+.2%}, limit +5%)")
    else:
        print(f"error: unknown wire benchmark {kind!r}: use protocol, fuzz or soak",
              file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
