"""The select_action fast lane: it answers exactly as the general path would, or declines.

Each check runs a frame through `bridge.api.fast_reply` for one agent and through the
server's general `handle` for a twin agent (same config and seed, so the same params and
the same random stream), and compares the reply bytes.
"""
from __future__ import annotations

import ast
import contextlib
import math
import os
import random
import shutil
import struct
import subprocess
import threading

import numpy as np
import pytest

import bridge.api as api
from bridge.protocol import Atom, FrameReader, decode, encode, frame
from bridge.protocol.fastpath import parse_call, result_reply
from bridge.protocol.server import Server
from bridge.serve import functions
from bridge.wirebench import mutate

OBS = [0.02, -0.01, 0.03, 0.01]
SMALL = {"seed": 5, "hidden_sizes": [16]}


def call(call_id, handle, *args, module="bridge.api", function="select_action"):
    return encode((Atom("C"), call_id, Atom(module), Atom(function), [handle, *args]))


def atom_ext(name: str) -> bytes:
    """ATOM_EXT, the atom encoding OTP < 26 writes (and the Debian OTP here)."""
    raw = name.encode("latin-1")
    return b"d" + struct.pack(">H", len(raw)) + raw


def otp24_call(call_id: int, number: int, obs, opts: bytes) -> bytes:
    """`term_to_binary` of the frame DQNBridge.Agent.select_action sends, as OTP 24
    writes it: ATOM_EXT atoms, the handle tag a binary, floats NEW_FLOAT_EXT."""
    ident = bytes((97, call_id)) if call_id < 256 else b"b" + struct.pack(">i", call_id)
    floats = b"".join(b"F" + struct.pack(">d", x) for x in obs)
    return (b"\x83h\x05" + atom_ext("C") + ident + atom_ext("bridge.api")
            + atom_ext("select_action") + b"l" + struct.pack(">I", 3)
            + b"h\x02m\x00\x00\x00\x05agent" + bytes((97, number))
            + b"l" + struct.pack(">I", len(obs)) + floats + b"j" + opts + b"j")


@pytest.fixture()
def twins():
    """Two agents built alike: one answered by the lane, one by the general path."""
    config = dict(SMALL)
    handles = api.new_agent(config), api.new_agent(config)
    yield handles
    for handle in handles:
        api.close(handle)


@pytest.fixture(scope="module")
def server():
    return Server(functions(), "bridge.api", -1, -1)


def lane(data):
    """The lane's reply to `data`, or None; a deferred training round is run at once,
    as the server does once the reply is written."""
    reply = api.fast_reply(data)
    if type(reply) is tuple:
        reply, then = reply
        then()
    return reply


def assert_same(server, fast_frame, general_frame):
    fast = lane(fast_frame)
    assert fast is not None, "the lane declined a frame it should serve"
    assert fast == server.handle(general_frame)
    return decode(fast)


@pytest.mark.parametrize("call_id", [0, 7, 255, 256, 70_000, 2**31 - 1, -3])
def test_replies_are_those_of_the_general_path(twins, server, call_id):
    a, b = twins
    reply = assert_same(server, call(call_id, a, OBS), call(call_id, b, OBS))
    assert reply[0] == "r" and reply[1] == call_id and reply[2] in (0, 1)


@pytest.mark.parametrize("opts, greedy", [(None, False), ([], False), ({Atom("greedy"): True}, True),
                                          ({Atom("greedy"): False}, False)])
def test_options_nil_empty_and_greedy_map(twins, server, opts, greedy):
    a, b = twins
    assert parse_call(call(1, a, OBS, opts))[4] is greedy
    assert_same(server, call(1, a, OBS, opts), call(1, b, OBS, opts))


@pytest.mark.parametrize("epsilon", [1.0, 0.5])
def test_the_random_stream_is_consumed_alike(server, epsilon):
    """With exploration on, 300 calls through each path give the same actions: the lane
    draws the same random numbers, in the same order, as Agent.act."""
    config = dict(SMALL, eps_start=epsilon, eps_end=epsilon)
    a, b = api.new_agent(config), api.new_agent(config)
    rng = random.Random(0)
    try:
        actions = []
        for i in range(300):
            obs = [rng.uniform(-2, 2) for _ in range(4)]
            actions.append(assert_same(server, call(i, a, obs), call(i, b, obs))[2])
        assert set(actions) == {0, 1}
    finally:
        api.close(a)
        api.close(b)


def test_frames_as_otp_24_writes_them(twins, server):
    a, b = twins
    for opts in (atom_ext("nil"), b"t\x00\x00\x00\x01" + atom_ext("greedy") + atom_ext("true")):
        for call_id in (3, 300):
            assert_same(server, otp24_call(call_id, a[1], OBS, opts),
                        otp24_call(call_id, b[1], OBS, opts))


@pytest.mark.skipif(shutil.which("erl") is None, reason="needs a real erl")
def test_the_frame_a_real_erl_writes_is_served(twins, server):
    """The exact bytes `term_to_binary(..., minor_version: 1)` gives on this OTP."""
    a, b = twins
    frames = []
    for handle in (a, b):
        term = (f"{{'C', 300, 'bridge.api', select_action, [{{<<\"agent\">>, {handle[1]}}}, "
                f"[0.02, -0.01, 0.03, 0.01], #{{greedy => false}}]}}")
        script = (f"io:format(\"~w\", [binary_to_list(term_to_binary({term}, "
                  f"[{{minor_version, 1}}]))]), halt().")
        out = subprocess.run(["erl", "-noshell", "-eval", script], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        frames.append(bytes(ast.literal_eval(out)))  # a list of byte values printed by erl
    assert_same(server, *frames)


def test_alternating_agents_of_different_sizes(server):
    """The lane caches the shape of the last call; calls that alternate between agents
    (and observation lengths) must not mix them up."""
    cart = [api.new_agent(SMALL) for _ in range(2)]
    acro = [api.new_agent(dict(SMALL, env_id="Acrobot-v1")) for _ in range(2)]
    obs6 = [0.1, -0.2, 0.3, 0.05, -0.4, 0.2]
    try:
        for i in range(20):
            pair, obs = (cart, OBS) if i % 2 else (acro, obs6)
            reply = assert_same(server, call(i, pair[0], obs), call(i, pair[1], obs))
            assert reply[2] in range(2 if pair is cart else 3)
    finally:
        for handle in cart + acro:
            api.close(handle)


def declined_frames(handle):
    env = api.env_make("CartPole-v1")
    big = 2**31
    frames = {
        "other function": call(1, handle, function="ping"),
        "other module": call(1, handle, OBS, module="os"),
        "unknown handle": call(1, ("agent", 999_999), OBS),
        "env handle": call(1, env, OBS),
        "other tag": call(1, ("env", handle[1]), OBS),
        "batch": call(1, handle, [OBS, OBS]),
        "short obs": call(1, handle, OBS[:3]),
        "long obs": call(1, handle, OBS + [0.0]),
        "empty obs": call(1, handle, []),
        "obs longer than the frame": call(1, handle, OBS).replace(b"l\x00\x00\x00\x04F",
                                                                  b"l\xff\xff\xff\xffF"),
        "integers in obs": call(1, handle, [0, 1, 0, 1]),
        "NaN": call(1, handle, [math.nan, 0.0, 0.0, 0.0]),
        "infinity": call(1, handle, [0.0, math.inf, 0.0, 0.0]),
        "beyond float32": call(1, handle, [0.0, 0.0, 1e300, 0.0]),
        "unknown option": call(1, handle, OBS, {Atom("fast"): True}),
        "greedy not a bool": call(1, handle, OBS, {Atom("greedy"): 1}),
        "two options": call(1, handle, OBS, {Atom("greedy"): True, Atom("x"): 1}),
        "extra argument": call(1, handle, OBS, None, None),
        "no observation": encode((Atom("C"), 1, Atom("bridge.api"), Atom("select_action"), [handle])),
        "big id": call(big, handle, OBS),
        "tensor obs": call(1, handle, (Atom("tensor"), Atom("f32"), (4,), bytes(16))),
        "trailing byte": call(1, handle, OBS) + b"j",
        "truncated": call(1, handle, OBS)[:-1],
        "improper args": call(1, handle, OBS)[:-1] + b"a\x01",
    }
    return env, frames


# Frames the general path answers with a result; every other declined frame is an error.
VALID_ELSEWHERE = {"other function", "batch", "big id", "tensor obs", "integers in obs"}


def test_every_other_frame_is_declined_and_answered_by_the_general_path(twins, server):
    a, _ = twins
    env, frames = declined_frames(a)
    try:
        for name, data in frames.items():
            assert api.fast_reply(data) is None, name
            reply = decode(server.handle(data))
            assert reply[0] == ("r" if name in VALID_ELSEWHERE else "e"), name
        message = decode(server.handle(frames["beyond float32"]))[2][2]
        assert message == b"obs holds 1e+300, beyond the range of float32 (largest magnitude 3.40282e+38)"
    finally:
        api.env_close(env)


def test_mutated_frames_never_raise_and_never_disagree(server):
    """Seeded byte mutations of select_action frames: whatever the lane answers is what
    the general path answers; everything else it declines. (A greedy agent, so both
    paths may act on the same agent.)"""
    handle = api.new_agent(dict(SMALL, eps_start=0.0, eps_end=0.0))
    rng = random.Random(11)
    served = 0
    try:
        for _ in range(3000):
            obs = [rng.uniform(-1, 1) for _ in range(4)]
            data = call(rng.randrange(300), handle, obs, rng.choice([None, {Atom("greedy"): True}]))
            data = mutate(rng, data) if rng.random() < 0.9 else data
            reply = lane(data)
            if reply is not None:
                served += 1
                assert reply == server.handle(data)
    finally:
        api.close(handle)
    assert served > 300


def test_result_reply_matches_the_encoder():
    for call_id in (0, 255, 256, -1, 2**31 - 1, -(2**31)):
        for value in (0, 1, 17, 300):
            assert result_reply(call_id, value) == encode((Atom("r"), call_id, value))


# --------------------------------------------------------------------------- step

STEP_CONFIG = dict(SMALL, learning_starts=40, batch_size=16, eps_decay_steps=300)


def step_call(call_id, handle, obs, reward, terminated, truncated, *final):
    return call(call_id, handle, obs, reward, terminated, truncated, *final, function="step")


def stream(n: int, seed: int = 0):
    """(obs, reward, terminated, truncated, final or no final) for n steps of a fake episode
    stream: episodes end every 23 steps (terminated) or 31 (truncated)."""
    rng = random.Random(seed)
    reward, terminated, truncated, last = 0.0, False, False, None
    for i in range(n):
        obs = [rng.uniform(-1, 1) for _ in range(4)]
        final = (last,) if (terminated or truncated) else rng.choice([(), (None,)])
        yield obs, reward, terminated, truncated, final
        last, reward = obs, rng.choice([1.0, 0.5, 1])
        terminated, truncated = i % 23 == 22, i % 31 == 30


@pytest.fixture()
def step_twins():
    handles = api.new_agent(STEP_CONFIG), api.new_agent(STEP_CONFIG)
    yield handles
    for handle in handles:
        api.close(handle)


def test_step_replies_and_training_are_those_of_the_general_path(step_twins, server):
    a, b = step_twins
    for i, (obs, reward, terminated, truncated, final) in enumerate(stream(400)):
        assert_same(server, step_call(i, a, obs, reward, terminated, truncated, *final),
                    step_call(i, b, obs, reward, terminated, truncated, *final))
    lane, general = api._agents[a[1]], api._agents[b[1]]
    assert lane.updates == general.updates > 300 and lane.env_steps == general.env_steps
    np.testing.assert_array_equal(np.asarray(lane.flat_params), np.asarray(general.flat_params))
    assert api.info(a) == api.info(b)


def test_step_frames_as_otp_24_writes_them(step_twins, server):
    a, b = step_twins
    for i, (obs, reward, terminated, truncated, final) in enumerate(stream(60)):
        frames = [encode((Atom("C"), i, Atom("bridge.api"), Atom("step"),
                          [(h[0].encode(), h[1]), obs, reward, terminated, truncated, *final]))
                  for h in (a, b)]
        assert_same(server, *[as_atom_ext(f) for f in frames])


def as_atom_ext(frame: bytes) -> bytes:
    """The frame with every SMALL_ATOM_UTF8_EXT rewritten as ATOM_EXT, as OTP 24 writes."""
    out, i = bytearray(), 0
    known = [b"C", b"bridge.api", b"step", b"true", b"false", b"nil"]
    while i < len(frame):
        for name in known:
            piece = bytes((119, len(name))) + name
            if frame.startswith(piece, i):
                out += atom_ext(name.decode())
                i += len(piece)
                break
        else:
            out.append(frame[i])
            i += 1
    return bytes(out)


def test_step_frames_the_lane_declines_change_nothing(step_twins, server):
    a, _ = step_twins
    obs = OBS
    frames = {
        "integers in obs": step_call(1, a, [0, 1, 0, 1], 1.0, False, False),
        "NaN in obs": step_call(1, a, [math.nan, 0.0, 0.0, 0.0], 1.0, False, False),
        "short obs": step_call(1, a, obs[:3], 1.0, False, False),
        "batch": step_call(1, a, [obs, obs], 1.0, False, False),
        "NaN reward": step_call(1, a, obs, math.nan, False, False),
        "reward beyond float32": step_call(1, a, obs, 1e300, False, False),
        "reward a string": step_call(1, a, obs, "1", False, False),
        "flag not a bool": step_call(1, a, obs, 1.0, 0, False),
        "final_obs short": step_call(1, a, obs, 1.0, True, False, obs[:2]),
        "final_obs a string": step_call(1, a, obs, 1.0, True, False, "x"),
        "missing truncated": call(1, a, obs, 1.0, False, function="step"),
        "extra argument": step_call(1, a, obs, 1.0, False, False, None, None),
        "unknown handle": step_call(1, ("agent", 999_999), obs, 1.0, False, False),
    }
    agent = api._agents[a[1]]
    for name, data in frames.items():
        before = (agent.env_steps, agent.vector_steps, dict(agent.prev_obs).keys())
        assert api.fast_reply(data) is None, name
        assert (agent.env_steps, agent.vector_steps, dict(agent.prev_obs).keys()) == before, name
        reply = decode(server.handle(data))
        assert reply[0] == ("r" if name in ("integers in obs", "batch") else "e"), name
    message = decode(server.handle(frames["reward beyond float32"]))[2][2]
    assert message == b"reward holds 1e+300, beyond the range of float32 (largest magnitude 3.40282e+38)"


@contextlib.contextmanager
def serve_loop():
    """The real serve loop (`Server.serve`, lane on) in a thread, over real pipes: yields
    (send(frame bytes), read() -> decoded reply); the input is closed at the end and
    the loop must then stop."""
    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    served = Server(functions(), "bridge.api", to_server, from_server, fast_reply=api.fast_reply)
    thread = threading.Thread(target=served.serve, daemon=True)
    thread.start()
    replies = FrameReader(to_client)
    try:
        yield (lambda data: os.write(from_client, frame(data))), (lambda: decode(replies.read()))
    finally:
        os.close(from_client)
        thread.join(10)
        for fd in (to_server, from_server, to_client):
            os.close(fd)
    assert not thread.is_alive()


def test_a_step_that_fails_once_started_is_reported_once_and_not_rerun():
    """Through the real serve loop: acting raises inside the lane's step, after the
    transition is stored; the reply is the error, the transition is stored exactly once,
    and the next call works."""
    from bridge import network

    a = api.new_agent(dict(STEP_CONFIG, eps_start=0.0, eps_end=0.0))  # always a forward pass
    agent = api._agents[a[1]]
    for i, (obs, reward, terminated, truncated, final) in enumerate(stream(100)):
        api.step(a, obs, reward, terminated, truncated, *final)
    with serve_loop() as (send, read):
        apply = network.apply
        network.apply = None  # acting fails once the transition is stored
        try:
            steps = agent.env_steps
            send(step_call(7, a, OBS, 1.0, False, False))
            tag, call_id, (_, cls, message, tb) = read()
            assert (tag, call_id, cls) == ("e", 7, "builtins.TypeError")
            assert b"'NoneType' object is not callable" in message and tb
            assert agent.env_steps == steps + 1  # stored once: the general path did not rerun it
        finally:
            network.apply = apply
        send(step_call(8, a, OBS, 1.0, False, False))
        assert read()[:2] == ("r", 8)
    api.close(a)


def test_a_deferred_round_that_fails_is_reported_by_the_next_step(step_twins):
    """Through the real serve loop: a step's training round runs after its reply. When
    it fails, the step has its action; the agent's next step is refused with the round's
    error and stores nothing; sent again, it works, and training goes on."""
    a, _ = step_twins
    agent = api._agents[a[1]]
    for i, (obs, reward, terminated, truncated, final) in enumerate(stream(100)):
        api.step(a, obs, reward, terminated, truncated, *final)
    with serve_loop() as (send, read):

        def info():
            send(call(99, a, function="info"))
            tag, _, result = read()
            assert tag == "r"
            return result[b"env_steps"], result[b"updates"]

        steps, updates = info()
        train_step, agent._train_step = agent._train_step, None
        try:
            send(step_call(7, a, OBS, 1.0, False, False))
            tag, call_id, action = read()
            assert (tag, call_id) == ("r", 7) and action in (0, 1)
            assert info() == (steps + 1, updates)  # stored; its round failed after the reply
        finally:
            agent._train_step = train_step
        send(step_call(8, a, OBS, 1.0, False, False))
        tag, call_id, (_, cls, message, tb) = read()
        assert (tag, call_id, cls) == ("e", 8, "builtins.RuntimeError")
        assert message.startswith(b"the training round after the last step failed (TypeError: ")
        assert info() == (steps + 1, updates)  # refused: nothing stored
        send(step_call(9, a, OBS, 1.0, False, False))
        assert read()[:2] == ("r", 9)
        assert info() == (steps + 2, updates + 1)


@pytest.mark.parametrize("kind", ["step", "step_rows"])
def test_mutated_step_frames_never_disagree(step_twins, server, kind):
    """Frames of one slot or of three, most of them mutated: whatever the lane serves, it
    serves as the general path does."""
    a, b = step_twins
    rng = random.Random(5)
    stream_ = stream(1500, seed=3) if kind == "step" else rows_stream(1200, 3, seed=4)
    served = 0
    for i, (obs, reward, terminated, truncated, final) in enumerate(stream_):
        data = step_call(i % 300, a, obs, reward, terminated, truncated, *final)
        if rng.random() < 0.8:
            data = mutate(rng, data)
        parsed = parse_call(data)
        if parsed is None or parsed[0] != kind or parsed[2] != a[1]:
            continue  # a frame for another agent (or none) would desynchronise the twins
        twin = data.replace(encode(a)[1:], encode(b)[1:])
        reply = lane(data)
        if reply is None:
            continue
        served += 1
        assert reply == server.handle(twin)
    assert served > 200
# ------------------------------------------------------------ step of several env slots

def rows_stream(n: int, slots: int, seed: int = 0):
    """(obs rows, rewards, terminated, truncated, final rows or no final) for n vector
    steps of `slots` fake episode streams: slot k's episodes end every 17 + k steps,
    terminated or truncated in turn; final rows come whenever a slot ended."""
    rng = random.Random(seed)
    rewards, terminated, truncated, last = [0.0] * slots, [False] * slots, [False] * slots, None
    for i in range(n):
        obs = [[rng.uniform(-1, 1) for _ in range(4)] for _ in range(slots)]
        final = (last,) if any(terminated) or any(truncated) else rng.choice([(), (None,)])
        yield obs, rewards, terminated, truncated, final
        last = obs
        rewards = [rng.choice([1.0, 0.5, -1.0]) for _ in range(slots)]
        ends = [i % (17 + k) == 16 + k for k in range(slots)]
        terminated = [e and (i // (17 + k)) % 2 == 0 for k, e in enumerate(ends)]
        truncated = [e and not t for e, t in zip(ends, terminated)]


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_step_of_several_slots_replies_and_trains_as_the_general_path(step_twins, server, slots):
    """Lists of rows, rewards and flags, with and without final rows: the lane's replies
    are the general path's byte for byte, and so is the training they drive."""
    a, b = step_twins
    served_final = 0
    for i, (obs, rewards, terminated, truncated, final) in enumerate(rows_stream(300, slots)):
        assert parse_call(step_call(i, a, obs, rewards, terminated, truncated, *final))[0] == "step_rows"
        reply = assert_same(server, step_call(i, a, obs, rewards, terminated, truncated, *final),
                            step_call(i, b, obs, rewards, terminated, truncated, *final))
        assert len(reply[2]) == slots
        served_final += bool(final and final[0])
    lane_agent, general = api._agents[a[1]], api._agents[b[1]]
    assert served_final > 10 and lane_agent.updates == general.updates > 200
    assert lane_agent.env_steps == general.env_steps == 299 * slots
    np.testing.assert_array_equal(np.asarray(lane_agent.flat_params), np.asarray(general.flat_params))
    assert api.info(a) == api.info(b)


def test_step_of_several_slots_as_otp_24_writes_it(step_twins, server):
    a, b = step_twins
    for i, (obs, rewards, terminated, truncated, final) in enumerate(rows_stream(60, 4)):
        frames = [encode((Atom("C"), i, Atom("bridge.api"), Atom("step"),
                          [(h[0].encode(), h[1]), obs, rewards, terminated, truncated, *final]))
                  for h in (a, b)]
        assert_same(server, *[as_atom_ext(f) for f in frames])


def test_step_of_several_slots_defers_its_round_to_after_the_reply(step_twins):
    a, _ = step_twins
    agent = api._agents[a[1]]
    for i, (obs, rewards, terminated, truncated, final) in enumerate(rows_stream(40, 4)):
        reply = api.fast_reply(step_call(i, a, obs, rewards, terminated, truncated, *final))
        if type(reply) is tuple:
            assert agent.pending_round and agent.updates == 0
            reply[1]()
            assert not agent.pending_round and agent.updates == 1
            return
    raise AssertionError("no training round came due")


def test_step_frames_of_several_slots_the_lane_declines_change_nothing(step_twins, server):
    a, _ = step_twins
    two = [OBS, OBS]
    frames = {
        # erl writes a list of integers 0..255 as STRING_EXT
        "rewards as a string": step_call(1, a, two, [1, 1], [False] * 2, [False] * 2).replace(
            b"l\x00\x00\x00\x02a\x01a\x01j", b"k\x00\x02\x01\x01"),
        "scalar reward": step_call(1, a, two, 1.0, [False] * 2, [False] * 2),
        "rewards too few": step_call(1, a, two, [1.0], [False] * 2, [False] * 2),
        "flags too many": step_call(1, a, two, [1.0] * 2, [False] * 3, [False] * 2),
        "ragged rows": step_call(1, a, [OBS, OBS[:3]], [1.0] * 2, [False] * 2, [False] * 2),
        "integers in a row": step_call(1, a, [OBS, [0, 1, 0, 1]], [1.0] * 2, [False] * 2, [False] * 2),
        "NaN in a row": step_call(1, a, [OBS, [math.nan, 0.0, 0.0, 0.0]], [1.0] * 2, [False] * 2, [False] * 2),
        "infinite reward": step_call(1, a, two, [1.0, math.inf], [False] * 2, [False] * 2),
        "reward beyond float32": step_call(1, a, two, [1.0, 1e300], [False] * 2, [False] * 2),
        "flag not a bool": step_call(1, a, two, [1.0] * 2, [False, 0], [False] * 2),
        "final rows too few": step_call(1, a, two, [1.0] * 2, [True, False], [False] * 2, [OBS]),
        "final row with nil": step_call(1, a, two, [1.0] * 2, [True, False], [False] * 2, [OBS, None]),
        "final row NaN": step_call(1, a, two, [1.0] * 2, [True, False], [False] * 2, [OBS, [math.nan] * 4]),
        "select_action with rows": call(1, a, two),
    }
    agent = api._agents[a[1]]
    ok = ("rewards as a string", "scalar reward", "integers in a row", "select_action with rows")
    for name, data in frames.items():
        before = (agent.env_steps, agent.vector_steps, dict(agent.prev_obs).keys())
        assert api.fast_reply(data) is None, name
        assert (agent.env_steps, agent.vector_steps, dict(agent.prev_obs).keys()) == before, name
        reply = decode(server.handle(data))
        assert reply[0] == ("r" if name in ok else "e"), (name, reply)


def test_integer_rewards_of_several_slots_are_served_as_the_general_path_serves_them(step_twins, server):
    a, b = step_twins
    for i, (obs, rewards, terminated, truncated, final) in enumerate(rows_stream(50, 2)):
        rewards = [int(r) for r in rewards]  # a list of small integers, as our encoder writes it
        assert_same(server, step_call(i, a, obs, rewards, terminated, truncated, *final),
                    step_call(i, b, obs, rewards, terminated, truncated, *final))


@pytest.mark.skipif(shutil.which("erl") is None, reason="needs a real erl")
def test_the_several_slot_step_frame_a_real_erl_writes_is_served(step_twins, server):
    """The bytes `term_to_binary(..., minor_version: 1)` gives on this OTP for the call a
    vectorised `DQNBridge.Loop` makes: rows of floats, float rewards, boolean lists and
    final rows; and the reply a real erl decodes to the list of actions."""
    a, b = step_twins
    frames = []
    for handle in (a, b):
        term = (f"{{'C', 9, 'bridge.api', step, [{{<<\"agent\">>, {handle[1]}}}, "
                "[[0.02, -0.01, 0.03, 0.01], [0.1, 0.2, -0.3, 0.0], [0.0, 0.0, 0.0, 0.5]], "
                "[1.0, 1.0, 0.0], [false, false, true], [false, false, false], "
                "[[0.5, 0.5, 0.5, 0.5], [0.1, 0.2, -0.3, 0.0], [2.0, 0.1, 0.0, 0.0]]]}")
        script = (f"io:format(\"~w\", [binary_to_list(term_to_binary({term}, "
                  f"[{{minor_version, 1}}]))]), halt().")
        out = subprocess.run(["erl", "-noshell", "-eval", script], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        frames.append(bytes(ast.literal_eval(out)))
    assert parse_call(frames[0])[0] == "step_rows"
    fast = lane(frames[0])
    assert fast == server.handle(frames[1])
    script = (f"{{r, 9, Actions}} = binary_to_term(list_to_binary({list(fast)})), "
              "io:format(\"~w\", [Actions]), halt().")
    out = subprocess.run(["erl", "-noshell", "-eval", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    actions = decode(fast)[2]
    assert len(actions) == 3 and ast.literal_eval(out) == actions
