"""The real `python -m bridge serve` over real pipes, in both descriptor modes."""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from bridge.protocol import Atom, encode
from conftest import ROOT, PortClient

pytestmark = pytest.mark.integration

GREEDY = {Atom("greedy"): True}
AGENT_CONFIG = {Atom("seed"): 0, Atom("learning_starts"): 500, Atom("eps_decay_steps"): 2000}


@pytest.fixture(scope="module", params=["fd34", "stdio"])
def served(request):
    """(client, agent handle, env handle) on one server per descriptor mode."""
    client = PortClient(use_stdio=request.param == "stdio")
    agent = client.call("new_agent", AGENT_CONFIG)
    env = client.call("env_make", "CartPole-v1")
    yield client, agent, env
    client.close()


def assert_still_serving(client: PortClient) -> None:
    assert client.call("ping", [Atom("alive"), 1]) == [Atom("alive"), 1]


# ------------------------------------------------------------------ every function

def greedy_return(client, agent, env, episodes=3, seed=1000) -> float:
    total = 0.0
    for k in range(episodes):
        obs, done = client.call("env_reset", env, seed + k), False
        while not done:
            action = client.call("select_action", agent, obs, GREEDY)
            obs, reward, terminated, truncated = client.call("env_step", env, action)
            total += reward
            done = terminated or truncated
    return total / episodes


def test_short_cartpole_training_through_step_improves_greedy_return(served):
    client, _, env = served
    agent = client.call("new_agent", AGENT_CONFIG)
    before = greedy_return(client, agent, env)
    obs = client.call("env_reset", env, 0)
    action = client.call("step", agent, obs, 0.0, False, False)  # first call only acts
    for _ in range(4000):
        next_obs, reward, terminated, truncated = client.call("env_step", env, action)
        final = None
        if terminated or truncated:
            final, next_obs = next_obs, client.call("env_reset", env, None)
        action = client.call("step", agent, next_obs, reward, terminated, truncated, final)
        assert action in (0, 1)
    info = client.call("info", agent)
    assert info[b"env_steps"] == 4000 and info[b"updates"] > 3000
    after = greedy_return(client, agent, env)
    assert after > before + 40, (before, after)
    assert client.call("close", agent) is None


def test_every_api_function_end_to_end(served, tmp_path):
    client, agent, env = served
    spec = client.call("env_spec", env)
    assert spec == {b"id": b"CartPole-v1", b"obs_dim": 4, b"obs_shape": [4], b"n_actions": 2,
                    b"max_episode_steps": 500, b"reward_threshold": 475.0}
    obs = client.call("env_reset", env, 7)
    assert len(obs) == 4 and all(type(x) is float for x in obs)
    assert client.call("select_action", agent, obs) in (0, 1)
    assert client.call("select_action", agent, obs, GREEDY) in (0, 1)
    batch = client.call("select_action", agent, [obs, obs, obs], {Atom("greedy"): False})
    assert len(batch) == 3 and set(batch) <= {0, 1}
    next_obs, reward, terminated, truncated = client.call("env_step", env, 1)
    assert (reward, terminated, truncated) == (1.0, False, False)
    transition = {Atom("obs"): obs, Atom("action"): 1, Atom("reward"): reward,
                  Atom("next_obs"): next_obs, Atom("terminated"): False,
                  Atom("truncated"): False}
    assert client.call("observe", agent, transition) is None
    batch_transition = {Atom(k): v for k, v in [
        ("obs", [obs, next_obs]), ("action", [0, 1]), ("reward", [1.0, 1.0]),
        ("next_obs", [next_obs, obs]), ("terminated", [False, True]),
        ("truncated", [False, False])]}
    assert client.call("observe", agent, batch_transition) is None
    assert client.call("optimize", agent) == b"skipped"  # replay below learning_starts
    assert client.call("step", agent, [obs, next_obs], [0.0, 0.0], [False, False],
                       [False, False]) in ([0, 0], [0, 1], [1, 0], [1, 1])
    info = client.call("info", agent)
    assert info[b"env_steps"] >= 3 and info[b"n_actions"] == 2
    assert info[b"config"][b"learning_starts"] == 500

    path = str(tmp_path / "agent.ckpt")
    assert client.call("save", agent, path) is None
    loaded = client.call("load", path)
    assert loaded != agent and loaded[0] == b"agent"
    assert client.call("info", loaded)[b"env_steps"] == info[b"env_steps"]
    probe = [[0.1, -0.2, 0.03, 0.4], [-0.5, 0.5, -0.1, 0.2]]
    assert client.call("select_action", loaded, probe, GREEDY) == \
        client.call("select_action", agent, probe, GREEDY)
    assert client.call("close", loaded) is None
    assert "unknown agent handle" in client.error("info", loaded).message

    other = client.call("env_make", "CartPole-v1", {Atom("max_episode_steps"): 3})
    assert client.call("env_spec", other)[b"max_episode_steps"] == 3
    client.call("env_reset", other, 1)
    assert [client.call("env_step", other, 0)[3] for _ in range(3)] == [False, False, True]
    assert client.call("env_close", other) is None
    assert client.call("ping", {Atom("k"): (1, 2.5, b"x", None, True)}) == \
        {Atom("k"): (1, 2.5, b"x", None, True)}


def test_pipelined_calls_are_answered_in_order(served):
    client, agent, _ = served
    obs = [0.01, 0.02, 0.03, 0.04]
    calls = []
    for i in range(60):
        if i % 3 == 0:
            calls.append(("ping", [i]))
        elif i % 3 == 1:
            calls.append(("select_action", [agent, obs, GREEDY]))
        else:
            calls.append(("no_such_function", []))
    ids = [client.send_call(name, args, call_id=1000 + i) for i, (name, args) in enumerate(calls)]
    replies = [client.recv() for _ in calls]
    assert [r[1] for r in replies] == ids
    for i, ((name, args), reply) in enumerate(zip(calls, replies)):
        if name == "ping":
            assert reply == (Atom("r"), 1000 + i, i)
        elif name == "select_action":
            assert reply[0] == "r" and reply[2] in (0, 1)
        else:
            assert reply[0] == "e"
    assert_still_serving(client)


# ---------------------------------------------------------------------- bad input

def test_unknown_function(served):
    client, _, _ = served
    err = client.error("__import__", "os")
    assert err.cls == "bridge.protocol.CallError"
    assert "bridge.api.__import__ is not an allowed function" in err.message
    assert "select_action" in err.message
    assert_still_serving(client)


def test_module_other_than_bridge_api(served):
    client, _, _ = served
    err = client.error("system", b"true", module="os")
    assert "module :os cannot be called: only bridge.api is served" in err.message
    assert_still_serving(client)


def test_wrong_arity(served):
    client, agent, _ = served
    err = client.error("select_action", agent)
    assert "bridge.api.select_action(handle, obs, opts=...) takes 2 to 3 argument(s), got 1" \
        in err.message
    assert "takes 1 argument(s), got 3" in client.error("ping", 1, 2, 3).message
    assert_still_serving(client)


def test_wrong_types(served):
    client, agent, env = served
    assert "obs must be a number, a list of numbers or a tensor, got b'up'" in \
        client.error("select_action", agent, b"up").message
    assert "transition must be a map or a keyword list, got 5" in \
        client.error("observe", agent, 5).message
    assert "option greedy must be true or false, got b'yes'" in \
        client.error("select_action", agent, [0.0] * 4, {Atom("greedy"): b"yes"}).message
    assert "action must be an integer, got 1.0" in client.error("env_step", env, 1.0).message
    assert "config lr must be a finite number" in \
        client.error("new_agent", {Atom("lr"): b"fast"}).message
    err = client.error("new_agent", 42)
    assert err.cls == "builtins.ValueError" and "config must be a map or a keyword list" in err.message
    assert err.traceback and any("bridge/config.py" in line for line in err.traceback)
    assert_still_serving(client)


def test_call_that_is_not_a_call_tuple(served):
    client, _, _ = served
    client.send_term((Atom("call"), 1, 2))
    tag, call_id, (_, cls, message, _) = client.recv()
    assert (tag, call_id, cls) == ("e", None, "bridge.protocol.CallError")
    assert b"expected a call {:C, id, module, function, args}" in message
    client.send_term((Atom("C"), 5, Atom("bridge.api"), Atom("ping"), Atom("not_a_list")))
    assert b"arguments of bridge.api.ping must be a list" in client.recv()[2][2]
    assert_still_serving(client)


def test_observation_of_the_wrong_shape(served):
    client, agent, _ = served
    assert "obs has shape [3]; expected [4] or [n_envs, 4]" in \
        client.error("select_action", agent, [0.1, 0.2, 0.3]).message
    assert "non-ragged" in client.error("select_action", agent, [[0.1] * 4, [0.1] * 3]).message
    assert_still_serving(client)


def test_nan_in_an_observation(served):
    client, agent, _ = served
    before = client.call("info", agent)[b"env_steps"]
    for bad in (Atom("nan"), Atom("infinity")):
        err = client.error("step", agent, [0.1, bad, 0.3, 0.4], 1.0, False, False)
        assert "obs contains a non-finite value" in err.message
    assert client.call("info", agent)[b"env_steps"] == before  # refused calls change nothing
    assert_still_serving(client)


def test_action_out_of_range(served):
    client, agent, env = served
    obs = [0.0, 0.0, 0.0, 0.0]
    transition = {Atom("obs"): obs, Atom("action"): 7, Atom("reward"): 1.0,
                  Atom("next_obs"): obs, Atom("terminated"): False, Atom("truncated"): False}
    assert "action 7 is out of range; allowed actions are 0..1" in \
        client.error("observe", agent, transition).message
    client.call("env_reset", env, 0)
    assert "action 5 is out of range; allowed actions are 0..1" in \
        client.error("env_step", env, 5).message
    assert_still_serving(client)


def test_unknown_handle(served):
    client, agent, env = served
    assert "unknown agent handle (b'agent', 999)" in \
        client.error("select_action", ("agent", 999), [0.0] * 4).message
    assert "unknown agent handle" in client.error("info", env).message  # an env is no agent
    assert "unknown env handle" in client.error("env_step", agent, 0).message
    assert_still_serving(client)


def test_unknown_config_key(served):
    client, _, _ = served
    err = client.error("new_agent", {Atom("learning_rate"): 0.1})
    assert "unknown config key 'learning_rate'" in err.message and "lr" in err.message
    assert "unknown key 'greed' in select_action options: allowed keys are greedy" in \
        client.error("select_action", served[1], [0.0] * 4, {Atom("greed"): True}).message
    assert_still_serving(client)


def test_improper_list(served):
    client, _, _ = served
    call = encode((Atom("C"), 77, Atom("bridge.api"), Atom("ping"), [[1, 2]]))
    improper = call.replace(b"a\x02jj", b"a\x02a\x03j")  # [1, 2 | 3]
    assert improper != call
    client.send_frame(improper)
    tag, call_id, (_, cls, message, _) = client.recv()
    assert (tag, call_id, cls) == ("e", 77, "bridge.protocol.DecodeError")
    assert b"improper list" in message
    assert_still_serving(client)


def test_truncated_frame(served):
    """A frame whose term is cut short (its length prefix matches the cut bytes)."""
    client, _, _ = served
    call = encode((Atom("C"), 78, Atom("bridge.api"), Atom("ping"), [b"x" * 100]))
    client.send_frame(call[:-40])
    tag, call_id, (_, cls, message, _) = client.recv()
    assert (tag, call_id, cls) == ("e", 78, "bridge.protocol.DecodeError")
    assert b"term truncated" in message
    client.send_frame(b"")
    assert b"empty frame" in client.recv()[2][2]
    assert_still_serving(client)


def test_frame_longer_than_the_length_limit():
    with PortClient(args=["--max-frame-bytes", "1000"]) as client:
        client.send_call("ping", [b"y" * 5000], call_id=79)
        tag, call_id, (_, cls, message, _) = client.recv()
        assert (tag, call_id, cls) == ("e", 79, "bridge.protocol.FrameTooLarge")
        assert b"exceeds the limit of 1000 bytes" in message
        assert client.call("ping", b"y" * 900) == b"y" * 900
        assert_still_serving(client)


def test_default_frame_limit_is_64_mib():
    with PortClient() as client:
        client.send_raw(struct.pack(">I", (64 << 20) + 1) + encode((Atom("C"), 80)))
        client.send_raw(b"\0" * ((64 << 20) + 1 - len(encode((Atom("C"), 80)))))
        reply = client.recv()
        assert reply[:2] == ("e", 80) and b"limit of 67108864 bytes" in reply[2][2]
        assert_still_serving(client)


# ------------------------------------------------------------------------ lifecycle

@pytest.mark.parametrize("use_stdio", [False, True])
def test_exit_0_on_end_of_input(use_stdio):
    client = PortClient(use_stdio=use_stdio)
    assert_still_serving(client)
    client.close_input()
    assert client.wait(10) == 0
    client.close()


def test_corrupt_frame_length_exits_non_zero_with_a_message():
    client = PortClient()
    client.send_raw(struct.pack(">I", 0x7FFF0000) + b"\x83junk")
    client.close_input()
    assert client.wait(10) == 2
    assert "input ended inside a frame" in client.stderr()
    assert "corrupt frame length" in client.stderr()
    client.close()


def test_spin_option_is_checked_and_zero_turns_it_off():
    out = subprocess.run([sys.executable, "-m", "bridge", "serve", "--spin-us", "-5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert "--spin-us must be between 0 and 1000000, got -5" in out.stderr
    with PortClient(args=["--spin-us", "0"]) as client:
        assert_still_serving(client)


def test_spin_by_default_only_when_more_than_one_cpu_is_allowed():
    script = ("import os, sys; from bridge.serve import spin_seconds, DEFAULT_SPIN_US; "
              "cpus = os.sched_getaffinity(0); before = spin_seconds(None); "
              "os.sched_setaffinity(0, {min(cpus)}); "
              "print(len(cpus), before, spin_seconds(None), DEFAULT_SPIN_US)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout.split()
    cpus, before, pinned, default_us = int(out[0]), float(out[1]), float(out[2]), float(out[3])
    assert before == (default_us * 1e-6 if cpus > 1 else 0.0)
    assert pinned == 0.0 and default_us > 0


def test_missing_descriptors_are_reported():
    out = subprocess.run([sys.executable, "-m", "bridge", "serve"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "fd 3 is not open" in out.stderr and out.stdout == ""


PARENT = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, {root!r})
    from bridge.protocol import Atom, encode, frame
    child = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--use-stdio"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd={root!r})
    call = (Atom("C"), 1, Atom("bridge.api"), Atom("new_agent"), [{{}}])
    child.stdin.write(frame(encode(call)))  # imports JAX and compiles: busy for seconds
    child.stdin.flush()
    print(child.pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return False


def test_exit_within_2_s_when_the_parent_dies_mid_call():
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=ROOT)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    server_pid = int(parent.stdout.readline())
    time.sleep(1.5)  # the server is now inside new_agent (JAX import / JIT compile)
    assert _alive(server_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    killed = time.monotonic()
    while _alive(server_pid) and time.monotonic() - killed < 5:
        time.sleep(0.05)
    assert not _alive(server_pid), "server outlived its parent by 5 s"
    assert time.monotonic() - killed < 2.0


ELIXIR_PORT = """
python = System.get_env("BRIDGE_PYTHON")
port = Port.open({:spawn_executable, python},
  [{:packet, 4}, :binary, :exit_status, :nouse_stdio, args: ["-m", "bridge", "serve"]])
call = fn id, fun, args ->
  Port.command(port, :erlang.term_to_binary({:C, id, :"bridge.api", fun, args}, minor_version: 1))
  receive do
    {^port, {:data, data}} -> IO.puts(inspect(:erlang.binary_to_term(data), width: :infinity))
  after 30_000 -> raise "no reply"
  end
end
call.(1, :ping, [[1, 2.5, "text", :atom, 'chars', %{key: nil}, {:t, -7}, 12345678901234567890]])
call.(2, :env_make, ["CartPole-v1", [max_episode_steps: 10]])
call.(3, :nope, [])
Port.close(port)
"""


@pytest.mark.skipif(shutil.which("elixir") is None, reason="needs elixir")
def test_a_real_elixir_port_drives_the_server():
    env = dict(os.environ, BRIDGE_PYTHON=sys.executable,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(["elixir", "-e", ELIXIR_PORT], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == '{:r, 1, [1, 2.5, "text", :atom, \'chars\', %{key: nil}, {:t, -7}, ' \
                       '12345678901234567890]}'
    assert lines[1].startswith('{:r, 2, {"env", ')
    assert lines[2].startswith("{:e, 3, {:python, :\"bridge.protocol.CallError\", ")
